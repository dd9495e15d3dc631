"""Bad input → one clear line on stderr (exit code 2), never a traceback, and before any heavy work (issue 11).

Each test calls the CLI in-process (`offline_infalign.cli.main`) and checks the exit code, that the one error line
names the bad value, and that no traceback was printed.
"""

import json

import pytest

from offline_infalign.cli import main
from tests.tiny_models import save_tiny_lm

WORDS = "the movie was very good . tell me about the cat please".split()


def _error(capsys, argv) -> str:
    """The one error line of a refused command (exit code 2, no traceback)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    errors = [line for line in captured.err.splitlines() if line.startswith(f"infalign {argv[0]}: error: ")]
    assert len(errors) == 1, captured.err
    return errors[0]


def _nothing_written(out) -> bool:
    """`out` holds no data: absent, or only the lock file of the refused run (storage.LOCK)."""
    from offline_infalign.storage import LOCK

    return not out.exists() or {p.name for p in out.iterdir()} <= {LOCK}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(6)))
    return {"root": root, "lm": str(save_tiny_lm(root / "lm")), "prompts": str(prompts)}


def _sample(assets, out, *extra):
    return ["sample", "--model", assets["lm"], "--prompts", assets["prompts"], "--num-samples", "2",
            "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), *extra]


# ---- prompt files ---------------------------------------------------------------------------------------------


def test_malformed_jsonl_line_is_named(assets, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the cat"}\n\n{"prompt": "the dog"\n{"prompt": "a"}\n')
    err = _error(capsys, _sample(assets, tmp_path / "o", "--prompts", str(bad)))
    assert f"prompt file {str(bad)!r} line 3 is not valid JSON" in err
    bad.write_text('{"prompt": "the cat"}\n["the dog"]\n')
    err = _error(capsys, _sample(assets, tmp_path / "o", "--prompts", str(bad)))
    assert "line 2 is a JSON list, not an object" in err
    assert _nothing_written(tmp_path / "o")


def test_non_utf8_prompt_file_names_the_byte_offset(assets, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "the cat"}\n{"prompt": "the caf\xe9"}\n')
    err = _error(capsys, _sample(assets, tmp_path / "o", "--prompts", str(bad)))
    assert f"prompt file {str(bad)!r} is not UTF-8 text: byte 0xe9 at byte offset 41 (line 2)" in err


def test_damaged_parquet_prompt_file(assets, tmp_path, capsys):
    bad = tmp_path / "junk.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    err = _error(capsys, _sample(assets, tmp_path / "o", "--prompts", str(bad)))
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
    # The model does not exist: the type error must come first, before anything is loaded.
    cfg.write_text(f"prompts: {assets['prompts']}\nmodel: {tmp_path / 'no_model'}\nout: {tmp_path / 'o'}\n{line}\n")
    err = _error(capsys, ["sample", "--config", str(cfg)])
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
    err = _error(capsys, ["prepare", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "p"),
                          "--transform", "identity", f"--beta={value}"])
    assert err.endswith(f"prepare: beta must be a finite number, got {float(value)!r}")


def test_train_learning_rate_inf_is_refused(tmp_path, capsys):
    err = _error(capsys, ["train", "--dataset", str(tmp_path), "--model", "m", "--loss", "listwise", "--out",
                          str(tmp_path / "t"), "--learning-rate", "inf"])
    assert err.endswith("train: learning_rate must be a finite number, got inf")
