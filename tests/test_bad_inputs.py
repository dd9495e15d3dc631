"""Bad input → one clear line on stderr (exit code 2), never a traceback, and before any heavy work.

Each test calls the CLI in-process (`offline_infalign.cli.main`) and checks the exit code, that the one error line
names the bad value, and that no traceback was printed. The exact-context-length prompt is in
test_context_boundary.py; output folders of another stage and --verify in test_bad_artifacts.py.
"""

from pathlib import Path

import pytest

from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, make_build, nothing_written, sample_argv


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def scored(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("scored") / "b")


# ---- prompt files ---------------------------------------------------------------------------------------------


def test_malformed_jsonl_line_is_named(assets, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the cat"}\n\n{"prompt": "the dog"\n{"prompt": "a"}\n')
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--prompts", str(bad)))
    assert f"prompt file {str(bad)!r} line 3 is not valid JSON" in err
    bad.write_text('{"prompt": "the cat"}\n["the dog"]\n')
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--prompts", str(bad)))
    assert "line 2 is a JSON list, not an object" in err
    assert nothing_written(tmp_path / "o")


def test_non_utf8_prompt_file_names_the_byte_offset(assets, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "the cat"}\n{"prompt": "the caf\xe9"}\n')
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--prompts", str(bad)))
    assert f"prompt file {str(bad)!r} is not UTF-8 text: byte 0xe9 at byte offset 41 (line 2)" in err


def test_damaged_parquet_prompt_file(assets, tmp_path, capsys):
    bad = tmp_path / "junk.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    err = error_line(capsys, sample_argv(assets, tmp_path / "o", "--prompts", str(bad)))
    assert f"prompt file {str(bad)!r} is not a readable Parquet file (ArrowInvalid: " in err


# ---- config values of the wrong type: refused when the config is read, before any model loads -----------------


@pytest.mark.parametrize("line, message", [
    ("temperature: hot", "sample: temperature must be a finite number, got 'hot'"),
    ("temperature: .inf", "sample: temperature must be a finite number, got inf"),
    ("seed: abc", "sample: seed must be an integer, got 'abc'"),
    ("seed: 1.7", "sample: seed must be an integer, got 1.7"),
    ("seed: 2.0", "sample: seed must be an integer, got 2.0"),
    ("seed: null", "sample: seed must be an integer, got null"),
    ("num_samples: true", "sample: num_samples must be an integer, got true"),
    ("max_new_tokens: [4, 8]", "sample: max_new_tokens must be an integer, got [4, 8]"),
    ("model: [a, b]", "sample: model must be a string, got ['a', 'b']"),
    ("trust_remote_code: 1", "sample: trust_remote_code must be true or false, got 1"),
    ("stop_token_ids: [2, x]", "sample: stop_token_ids must be an integer, a list of integers or null, got [2, 'x']"),
    ("limit: 2.5", "sample: limit must be an integer or null, got 2.5"),
])
def test_yaml_value_of_the_wrong_type(assets, tmp_path, capsys, line, message):
    cfg = tmp_path / "c.yaml"
    # The model does not exist: the type error must come first, before anything is loaded. Each key once (a key
    # given twice is an error of its own).
    base = {"prompts": assets["prompts"], "model": tmp_path / "no_model", "out": tmp_path / "o"}
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in base.items() if k != line.split(":")[0]) + f"{line}\n")
    err = error_line(capsys, ["sample", "--config", str(cfg)])
    assert err.endswith(f"{message} in config file {str(cfg)!r}")


def test_yaml_values_that_are_fine_are_normalized(tmp_path):
    from offline_infalign.config import SampleConfig, TrainConfig, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompts: p.jsonl\nmodel: m\nout: o\ntemperature: 1\ntop_p: 5e-1\nstop_token_ids: 3\n")
    sample = load_config(SampleConfig, cfg)
    # An int for a float field is a float, PyYAML's string '5e-1' a number, one id a list of one.
    assert (sample.temperature, sample.top_p, sample.stop_token_ids) == (1.0, 0.5, [3])
    assert isinstance(sample.temperature, float)
    cfg.write_text("dataset: d\nmodel: m\nloss: listwise\nout: o\nlearning_rate: 5e-5\ntarget_modules: q_proj\n")
    train = load_config(TrainConfig, cfg)
    assert (train.learning_rate, train.target_modules) == (5e-5, ["q_proj"])


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_prepare_beta_inf_is_refused_naming_beta(tmp_path, capsys, value):
    err = error_line(capsys, ["prepare", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "p"),
                          "--transform", "identity", f"--beta={value}"])
    assert err.endswith(f"prepare: beta must be a finite number, got {float(value)!r}")


def test_train_learning_rate_inf_is_refused(tmp_path, capsys):
    err = error_line(capsys, ["train", "--dataset", str(tmp_path), "--model", "m", "--loss", "listwise", "--out",
                          str(tmp_path / "t"), "--learning-rate", "inf"])
    assert err.endswith("train: learning_rate must be a finite number, got inf")


# ---- model and reward paths: one line naming the path and what is wrong, before anything runs -----------------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    garbage = root / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("this is not json\n")
    empty = root / "noconfig"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi\n")
    return {"missing": (str(root / "missing" / "model"), "does not exist (no such folder)"),
            "garbage": (str(garbage), "is not a model folder: its config.json is not JSON"),
            "noconfig": (str(empty), "is not a model folder: it has no config.json (it holds notes.txt)")}


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_model_path_sample_and_train(assets, bad_models, scored, tmp_path, capsys, case):
    path, what = bad_models[case]
    err = error_line(capsys, ["sample", "--model", path, "--prompts", assets["prompts"], "--out", str(tmp_path / "s")])
    assert err.endswith(f"model {path!r} {what}") or f"model {path!r} {what}" in err
    assert not (tmp_path / "s").exists()  # refused before the output folder is touched
    err = error_line(capsys, ["train", "--dataset", str(scored / "prepared"), "--model", path, "--loss",
                          "tilted_pairwise", "--out", str(tmp_path / "t")])
    assert f"model {path!r} {what}" in err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_reward_path_score(bad_models, scored, tmp_path, capsys, case):
    path, what = bad_models[case]
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", path, "--out",
                          str(tmp_path / "s")])
    assert f"reward model {path!r} {what}" in err and not (tmp_path / "s").exists()


def test_hub_id_that_cannot_load_and_a_file_as_model(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = error_line(capsys, ["sample", "--model", "no-such-org/no-such-model", "--prompts", assets["prompts"],
                          "--out", str(tmp_path / "s")])
    assert "model 'no-such-org/no-such-model' is not a local folder, and as a hub id it cannot be loaded " \
           "(offline: HF_HUB_OFFLINE is set)" in err
    err = error_line(capsys, ["sample", "--model", assets["prompts"], "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {assets['prompts']!r} is a file, not a model folder" in err


def test_model_folder_without_weights_or_tokenizer(assets, tmp_path, capsys):
    import shutil

    lm = Path(assets["lm"])
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(lm / "config.json", no_weights)
    err = error_line(capsys, ["sample", "--model", str(no_weights), "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {str(no_weights)!r} has a config.json but no weight files" in err
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for f in lm.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, no_tokenizer)
    err = error_line(capsys, ["sample", "--model", str(no_tokenizer), "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {str(no_tokenizer)!r} has no tokenizer files" in err


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_base_model_or_judge_in_eval(scored, bad_models, tmp_path_factory, tmp_path, capsys, case):
    adapter = _adapter(scored, tmp_path_factory)
    path, what = bad_models[case]
    base = ["eval", "--policy", str(adapter), "--limit", "2", "--samples", "2", "--max-new-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "e")]
    assert f"base model {path!r} {what}" in error_line(capsys, [*base, "--model", path])
    assert f"reward model {path!r} {what}" in error_line(capsys, [*base, "--reward-model", path])
    assert not (tmp_path / "e" / "samples.jsonl").exists()


_ADAPTER = {}


def _adapter(scored, tmp_path_factory):
    """A one-step adapter on the scored fixture's prepared dataset, trained once per module."""
    if "path" not in _ADAPTER:
        out = tmp_path_factory.mktemp("adapter") / "a"
        from offline_infalign.artifacts.storage import read_manifest

        model = read_manifest(scored / "samples")["model"]
        assert main(["train", "--dataset", str(scored / "prepared"), "--model", model, "--loss", "tilted_pairwise",
                     "--out", str(out), "--max-steps", "1", "--save-steps", "1000"]) == 0
        _ADAPTER["path"] = out
    return _ADAPTER["path"]


# ---- a reward callable that raises or returns another shape: named, with the prompt_id and completion --------


def raising_reward(prompts, completions):
    """Raises on the completion the test plants (any other scores fine)."""
    if any(c == PLANTED for c in completions):
        raise ValueError("cannot score this one")
    return [float(len(c)) for c in completions]


PLANTED = "__planted__"


def half_shape_reward(prompts, completions):
    import numpy as np

    return np.zeros((len(completions) // 2, 2))


def list_of_lists_reward(prompts, completions):
    return [[1.0, 2.0] if i % 2 else [1.0] for i in range(len(completions))]


def string_reward(prompts, completions):
    return ["good"] * len(completions)


def scalar_reward(prompts, completions):
    return 1.0


def test_raising_reward_names_prompt_id_and_completion(scored, tmp_path, capsys):
    import datasets

    from offline_infalign.models.scoring import load_scorer, score_texts

    samples = datasets.load_from_disk(str(scored / "samples"))
    completions = [list(c) for c in samples["completions"]]
    completions[3][2] = PLANTED
    with pytest.raises(Exception) as info:
        score_texts(load_scorer("tests.test_bad_inputs:raising_reward"), samples["prompt"], completions,
                    samples["prompt_id"])
    text = str(info.value)
    assert "reward function 'tests.test_bad_inputs:raising_reward' raised ValueError: cannot score this one" in text
    assert f"on prompt_id {samples['prompt_id'][3]}, completion 2 ('{PLANTED}')" in text


def test_raising_reward_through_the_cli(scored, tmp_path, capsys):
    from offline_infalign.artifacts.storage import load_artifact

    first = load_artifact(scored / "samples")[0]["prompt_id"][0]
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model",
                          "tests.test_bad_inputs:raising_reward_always", "--out", str(tmp_path / "s")])
    assert "reward function 'tests.test_bad_inputs:raising_reward_always' raised ZeroDivisionError: division by " \
           f"zero — on prompt_id {first}, completion 0" in err
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model",
                          "tests.test_bad_inputs:scalar_reward", "--out", str(tmp_path / "s")])
    assert "scorer 'tests.test_bad_inputs:scalar_reward' returned shape () for 24 completions" in err


@pytest.mark.parametrize("fn, message", [
    ("half_shape_reward", "returned shape (12, 2) for 24 completions; expected one float per completion, shape (24,)"),
    ("list_of_lists_reward", "returned list that is not an array of numbers"),
    ("string_reward", "returned values of type str_ (e.g. 'good') for 24 completions; expected one float per "
                      "completion, shape (24,)"),
])
def test_reward_of_another_shape_is_refused(scored, tmp_path, capsys, fn, message):
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", f"tests.test_bad_inputs:{fn}",
                          "--out", str(tmp_path / "s")])
    assert f"scorer 'tests.test_bad_inputs:{fn}' {message}" in err


def test_reward_module_that_fails_on_import(tmp_path, capsys, monkeypatch, scored):
    (tmp_path / "broken_reward.py").write_text("raise RuntimeError('missing API key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = error_line(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", "broken_reward:fn",
                          "--out", str(tmp_path / "s")])
    assert "cannot load reward function 'broken_reward:fn': importing 'broken_reward' raised RuntimeError: " \
           "missing API key" in err


# ---- build checks the reward before it samples anything --------------------------------------------------------


def nan_once_reward(prompts, completions):
    return [float("nan")] * len(completions)


@pytest.mark.parametrize("reward, message", [
    ("tests.test_bad_inputs:nan_once_reward", "non-finite reward nan"),
    ("tests.test_bad_inputs:scalar_reward", "returned shape () for 1 completions"),
    ("tests.test_bad_inputs:raising_reward_always", "raised ZeroDivisionError"),
    ("tests.test_bad_inputs:no_such_function", "module 'tests.test_bad_inputs' has no 'no_such_function'"),
])
def test_build_checks_the_reward_before_sampling(assets, tmp_path, capsys, reward, message):
    out = tmp_path / "b"
    err = error_line(capsys, ["build", "--model", assets["lm"], "--reward-model", reward, "--prompts", assets["prompts"],
                          "--num-samples", "2", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)])
    assert message in err
    assert not (out / "samples").exists()  # nothing sampled, not even the folder


def raising_reward_always(prompts, completions):
    return [1 / 0 for _ in completions]


def test_config_file_not_utf8_not_yaml_or_a_folder(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"prompts: p.jsonl\nmodel: caf\xe9\n")
    err = error_line(capsys, ["sample", "--config", str(cfg)])
    assert f"config file {str(cfg)!r} is not UTF-8 text: byte 0xe9 at byte offset 27 (line 2)" in err
    cfg.write_text("model: [a\n")
    err = error_line(capsys, ["sample", "--config", str(cfg)])
    assert f"config file {str(cfg)!r} is not valid YAML: while parsing a flow sequence" in err  # one line
    assert f"config file {str(tmp_path)!r} is a folder, not a file" in error_line(capsys, ["sample", "--config",
                                                                                        str(tmp_path)])
