"""What runs code: eval never imports a judge named by a downloaded adapter folder, and weights load from
safetensors only unless the user opts in with allow_pickle_weights (README: Reliability)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from tiny_models import save_tiny_lm, tiny_causal_lm, tiny_reward_model, tiny_tokenizer

from offline_infalign.config import (
    BuildConfig,
    EvalConfig,
    SampleConfig,
    ScoreConfig,
    TrainConfig,
    load_config,
)
from offline_infalign.core.errors import InfalignError
from offline_infalign.models import modeling

PLUGIN = '''
from pathlib import Path
Path({marker!r}).write_text("imported")  # what a hostile module would do: run on import


def score(prompts, completions):
    return [float(len(c)) for c in completions]
'''


def _as_pickle(folder, safetensors_name="model.safetensors", pickle_name="pytorch_model.bin"):
    """Turn a saved folder's weights into a pickle file, as older checkpoints ship them (transformers 5 no
    longer writes one: safe_serialization=False is gone)."""
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / safetensors_name), folder / pickle_name)
    (folder / safetensors_name).unlink()
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A safetensors base, the same base as pickle, a pickle reward model and adapters in both formats."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("sec")
    tok = tiny_tokenizer()
    safe = save_tiny_lm(root / "safe")
    pickle_lm = _as_pickle(save_tiny_lm(root / "pickle_lm"))
    pickle_rm = root / "pickle_rm"
    tiny_reward_model(tok).save_pretrained(pickle_rm)
    tok.save_pretrained(pickle_rm)
    _as_pickle(pickle_rm)
    adapters = {}
    for name, safe_serialization in (("adapter_safe", True), ("adapter_pickle", False)):
        lora = get_peft_model(tiny_causal_lm(tok), LoraConfig(r=2, target_modules=["lm_head"]))
        lora.save_pretrained(root / name, safe_serialization=safe_serialization)  # peft still writes .bin
        adapters[name] = root / name
    assert (pickle_lm / "pytorch_model.bin").is_file() and not list(pickle_lm.glob("*.safetensors"))
    assert (adapters["adapter_pickle"] / "adapter_model.bin").is_file()
    return {"root": root, "safe": safe, "pickle_lm": pickle_lm, "pickle_rm": pickle_rm, **adapters}


def _refused(exc, folder) -> None:
    text = str(exc.value)
    assert "\n" not in text and str(folder) in text and "--allow-pickle-weights" in text, text


def test_every_model_load_refuses_pickle_only_weights(folders):
    from offline_infalign.models.scoring import HFRewardScorer, load_scorer

    with pytest.raises(InfalignError, match="has no safetensors weights") as exc:
        modeling.load_causal_lm(str(folders["pickle_lm"]), device="cpu")
    _refused(exc, folders["pickle_lm"])
    with pytest.raises(InfalignError, match="has no safetensors weights") as exc:
        modeling.load_base(str(folders["pickle_lm"]))
    _refused(exc, folders["pickle_lm"])
    with pytest.raises(InfalignError, match="has no safetensors weights"):
        modeling.load_policy(str(folders["pickle_lm"]), lora_r=2)
    with pytest.raises(InfalignError, match="reward model .* has no safetensors weights") as exc:
        HFRewardScorer(str(folders["pickle_rm"]), device="cpu")
    _refused(exc, folders["pickle_rm"])
    with pytest.raises(InfalignError, match="has no safetensors weights"):
        load_scorer(str(folders["pickle_rm"]), device="cpu")
    # A safetensors base with a pickle adapter: the adapter (the folder most often downloaded) is refused too.
    with pytest.raises(InfalignError, match="adapter .* has no safetensors weights") as exc:
        modeling.load_adapted(str(folders["safe"]), folders["adapter_pickle"])
    _refused(exc, folders["adapter_pickle"])
    # config.json naming a pickle weight file is refused although safetensors are there.
    named = folders["root"] / "named"
    save_tiny_lm(named)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    with pytest.raises(InfalignError, match="names the weight file 'adapter_model.bin'"):
        modeling.load_causal_lm(str(named), device="cpu")


def test_the_opt_in_loads_pickle_weights_and_safetensors_load_without_it(folders):
    from offline_infalign.models.scoring import load_scorer

    model, _ = modeling.load_causal_lm(str(folders["pickle_lm"]), device="cpu", allow_pickle_weights=True)
    reference, _ = modeling.load_causal_lm(str(folders["safe"]), device="cpu")
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert a.equal(b), name  # the same seed's weights, in either format
    scorer = load_scorer(str(folders["pickle_rm"]), device="cpu", allow_pickle_weights=True)
    assert scorer(["the movie"], ["good"]).shape == (1,)
    policy, _ = modeling.load_adapted(str(folders["pickle_lm"]), folders["adapter_pickle"], allow_pickle_weights=True)
    policy, _ = modeling.load_adapted(str(folders["safe"]), folders["adapter_safe"])
    assert policy.peft_config["default"].r == 2


def test_a_hub_id_without_safetensors_is_refused_naming_the_flag(monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}

    def fake(path, **kwargs):  # what transformers raises for a hub repo without safetensors
        seen.update(kwargs)
        raise OSError(f"{path} does not appear to have a file named model.safetensors")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(InfalignError, match="'org/old-model' has no safetensors weights") as exc:
        modeling.load_base("org/old-model")
    _refused(exc, "org/old-model")
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_every_model_loading_config_offers_the_opt_in_off_by_default():
    help_text = "load a model folder that only has pytorch_model.bin (pickle: can run code); off by default"
    for cls in (TrainConfig, SampleConfig, ScoreConfig, EvalConfig, BuildConfig):
        f = {f.name: f for f in dataclasses.fields(cls)}["allow_pickle_weights"]
        assert f.default is False and f.metadata["help"] == help_text, cls.__name__
    build = load_config(BuildConfig, None, dict(prompts="demo", model="m", out="o", reward_model="demo",
                                                 allow_pickle_weights=True))
    assert build.sample_config().allow_pickle_weights and build.score_config().allow_pickle_weights


def test_sample_stage_refuses_a_pickle_model_before_writing_data(folders, tmp_path):
    from offline_infalign.stages.sample import run_sample

    cfg = load_config(SampleConfig, None, dict(prompts="demo", model=str(folders["pickle_lm"]), limit=2,
                                               num_samples=2, max_new_tokens=2, out=str(tmp_path / "s")))
    with pytest.raises(InfalignError, match="--allow-pickle-weights"):
        run_sample(cfg, progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists() and not (tmp_path / "s" / "_work").exists()


# ---- eval's judge: only what the user names is imported --------------------------------------------------


def _downloaded_adapter(root, base, judge: str):
    """An adapter folder as it might arrive from elsewhere: a PEFT adapter whose training record names `judge`."""
    from peft import LoraConfig, get_peft_model

    adapter = root / "downloaded_adapter"
    tok = tiny_tokenizer()
    get_peft_model(tiny_causal_lm(tok), LoraConfig(r=2, target_modules=["lm_head"])).save_pretrained(adapter)
    tok.save_pretrained(adapter)
    (adapter / "infalign_train.json").write_text(json.dumps({
        "model": str(base), "reward_model": judge, "loss": "tilted_pairwise", "transform": "exp", "tilt": 2.0,
        "beta": 0.5, "procedure": "bon", "n": 2}))
    return adapter


@pytest.fixture
def plugin_cwd(tmp_path, monkeypatch, folders):
    """A working directory holding `judge_plugin.py`, importable (on sys.path), that leaves a marker if imported."""
    cwd = tmp_path / "download"
    cwd.mkdir()
    marker = tmp_path / "judge_plugin_ran"
    (cwd / "judge_plugin.py").write_text(PLUGIN.format(marker=str(marker)))
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))
    monkeypatch.delitem(sys.modules, "judge_plugin", raising=False)
    prompts = cwd / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("the movie was", "the food is")))
    adapter = _downloaded_adapter(cwd, folders["safe"], "judge_plugin:score")
    return {"cwd": cwd, "marker": marker, "adapter": adapter, "prompts": prompts}


def _eval_argv(setup, out, *extra):
    return ["eval", "--policy", str(setup["adapter"]), "--prompts", str(setup["prompts"]), "--samples", "2",
            "--n", "1,2", "--max-new-tokens", "3", "--num-bootstrap", "20", "--device", "cpu", "--no-plots",
            "--out", str(out), *extra]


def test_eval_refuses_a_judge_named_by_the_adapter_folder(plugin_cwd, capsys):
    from offline_infalign.cli import main

    assert main(_eval_argv(plugin_cwd, plugin_cwd["cwd"] / "eval")) == 2
    err = capsys.readouterr().err.strip()
    assert "judge_plugin:score" in err and "--reward-model judge_plugin:score" in err, err
    assert len(err.splitlines()) == 1, err
    assert not plugin_cwd["marker"].exists() and "judge_plugin" not in sys.modules


def test_eval_imports_the_judge_the_user_names(plugin_cwd):
    from offline_infalign.cli import main

    out = plugin_cwd["cwd"] / "eval"
    assert main(_eval_argv(plugin_cwd, out, "--reward-model", "judge_plugin:score")) == 0
    assert plugin_cwd["marker"].exists()
    assert json.loads((out / "report.json").read_text())["reward_model"] == "judge_plugin:score"


def test_a_recorded_model_folder_or_demo_judge_still_applies(tmp_path, folders):
    from types import SimpleNamespace

    from offline_infalign.artifacts.training_record import names_code, resolve_settings

    fields = {f.name: f.default for f in dataclasses.fields(EvalConfig) if f.default is not dataclasses.MISSING}
    for judge in (str(folders["pickle_rm"]), "demo", "org/reward-model"):  # weights (or built in), not code
        cfg = SimpleNamespace(**{**fields, "policy": str(tmp_path), "prompts": "demo"})
        settings = resolve_settings(cfg, {"model": str(folders["safe"]), "reward_model": judge})
        assert settings.reward_model == judge and not names_code(judge)
    assert names_code("judge_plugin:score")
    # The same name from the dataset manifest inside the record is refused as well.
    cfg = SimpleNamespace(**{**fields, "policy": str(tmp_path), "prompts": "demo"})
    with pytest.raises(InfalignError, match="Pass --reward-model pkg.mod:fn"):
        resolve_settings(cfg, {"model": "m", "dataset_manifest": {"reward_model": "pkg.mod:fn"}})
