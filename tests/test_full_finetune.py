"""Full fine-tuning (train --full-finetune): every weight trains against the stored reference, OUT is a model
folder (safetensors) that eval loads beside its base; qlora, a live reference, or a dataset whose stored columns
cannot be used are clear errors."""

import json

import pytest
import torch
from tiny_models import save_tiny_reward_model
from train_fixtures import make_prepared

from offline_infalign import cli
from offline_infalign.config import TrainConfig
from offline_infalign.core.errors import InfalignError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    pairs, model = make_prepared(root, "pairs", beta=0.5)
    bare, _ = make_prepared(root / "bare", "pairs", model, beta=0.5, with_reference=False)
    return {"pairs": pairs, "bare": bare, "model": model, "root": root}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_trains_every_weight_saves_a_model_folder_and_eval_loads_it(data, tmp_path):
    out = tmp_path / "full"
    rc = cli.main(["train", "--dataset", str(data["pairs"]), "--model", str(data["model"]), "--loss",
                   "tilted_sigmoid", "--out", str(out), "--max-steps", "3", "--learning-rate", "1e-2",
                   "--full-finetune", "--save-steps", "2", "--per-device-train-batch-size", "4"])
    assert rc == 0
    record = json.loads((out / "infalign_train.json").read_text())
    assert record["reference"] == "stored" and record["config"]["full_finetune"] and record["global_step"] == 3
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    before, after = _weights(data["model"]), _weights(out)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == set(before)  # every weight trained, embeddings and norms included
    assert "full fine-tuning" in (out / "README.md").read_text()

    from offline_infalign.models.modeling import FullPolicy, load_adapted

    policy, tok = load_adapted(str(data["model"]), out)
    assert isinstance(policy, FullPolicy)
    ids = torch.tensor([tok("the movie was good")["input_ids"]])
    with torch.no_grad():
        trained = policy(input_ids=ids).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids).logits
        assert not torch.allclose(trained, base)
        torch.testing.assert_close(base, policy.base(input_ids=ids).logits)
    # eval end to end: policy and base samples, the KL, the judge.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["tell me about the movie", "a day"]))
    rm = save_tiny_reward_model(tmp_path / "rm")
    assert cli.main(["eval", "--policy", str(out), "--prompts", str(prompts), "--reward-model", str(rm),
                     "--samples", "4", "--max-new-tokens", "5", "--num-bootstrap", "50", "--device", "cpu",
                     "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert report["model"] == str(data["model"].resolve()) and len(rows) == 2
    assert any(abs(x) > 1e-3 for r in rows for x in r["log_ratios"])  # the trained model is not the base


def _cfg(data, tmp_path, **kw):
    base = dict(dataset=str(data["pairs"]), model=str(data["model"]), loss="tilted_sigmoid",
                out=str(tmp_path / "o"), max_steps=1, save_steps=None, full_finetune=True)
    return TrainConfig(**{**base, **kw})


def test_errors(data, tmp_path):
    with pytest.raises(InfalignError, match="full_finetune .* cannot be combined with qlora"):
        _cfg(data, tmp_path, qlora=True)
    with pytest.raises(InfalignError, match="reference='live' is the policy with its LoRA adapter disabled"):
        _cfg(data, tmp_path, reference="live")
    from offline_infalign.stages import train as T

    # auto on a dataset without stored columns would pick live: refused, with the reason.
    with pytest.raises(InfalignError, match="full_finetune needs the dataset's stored reference log-probs.*no "
                                            "stored reference log-prob columns"):
        T.make_trainer(_cfg(data, tmp_path, dataset=str(data["bare"])))
    with pytest.raises(InfalignError, match="reference='stored' needs column"):
        T.make_trainer(_cfg(data, tmp_path, dataset=str(data["bare"]), reference="stored"))
