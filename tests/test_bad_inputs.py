"""Bad input → one clear line on stderr (exit code 2), never a traceback, and before any heavy work (issue 11).

Each test calls the CLI in-process (`offline_infalign.cli.main`) and checks the exit code, that the one error line
names the bad value, and that no traceback was printed.
"""

import json
from pathlib import Path

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


@pytest.fixture(scope="module")
def scored(assets, tmp_path_factory):
    """A small build (samples, scored, prepared) and a one-step adapter, for the stages that read them."""
    out = tmp_path_factory.mktemp("scored") / "b"
    argv = ["build", "--model", assets["lm"], "--reward-model", "demo", "--prompts", assets["prompts"],
            "--num-samples", "4", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), "--transform",
            "identity", "--beta", "0.5"]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_model_path_sample_and_train(assets, bad_models, scored, tmp_path, capsys, case):
    path, what = bad_models[case]
    err = _error(capsys, ["sample", "--model", path, "--prompts", assets["prompts"], "--out", str(tmp_path / "s")])
    assert err.endswith(f"model {path!r} {what}") or f"model {path!r} {what}" in err
    assert not (tmp_path / "s").exists()  # refused before the output folder is touched
    err = _error(capsys, ["train", "--dataset", str(scored / "prepared"), "--model", path, "--loss",
                          "tilted_pairwise", "--out", str(tmp_path / "t")])
    assert f"model {path!r} {what}" in err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_reward_path_score(bad_models, scored, tmp_path, capsys, case):
    path, what = bad_models[case]
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", path, "--out",
                          str(tmp_path / "s")])
    assert f"reward model {path!r} {what}" in err and not (tmp_path / "s").exists()


def test_hub_id_that_cannot_load_and_a_file_as_model(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _error(capsys, ["sample", "--model", "no-such-org/no-such-model", "--prompts", assets["prompts"],
                          "--out", str(tmp_path / "s")])
    assert "model 'no-such-org/no-such-model' is not a local folder, and as a hub id it cannot be loaded " \
           "(offline: HF_HUB_OFFLINE is set)" in err
    err = _error(capsys, ["sample", "--model", assets["prompts"], "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {assets['prompts']!r} is a file, not a model folder" in err


def test_model_folder_without_weights_or_tokenizer(assets, tmp_path, capsys):
    import shutil

    lm = Path(assets["lm"])
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(lm / "config.json", no_weights)
    err = _error(capsys, ["sample", "--model", str(no_weights), "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {str(no_weights)!r} has a config.json but no weight files" in err
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for f in lm.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, no_tokenizer)
    err = _error(capsys, ["sample", "--model", str(no_tokenizer), "--prompts", assets["prompts"], "--out",
                          str(tmp_path / "s")])
    assert f"model {str(no_tokenizer)!r} has no tokenizer files" in err


@pytest.mark.parametrize("case", ["missing", "garbage", "noconfig"])
def test_bad_base_model_or_judge_in_eval(scored, bad_models, tmp_path_factory, tmp_path, capsys, case):
    adapter = _adapter(scored, tmp_path_factory)
    path, what = bad_models[case]
    base = ["eval", "--policy", str(adapter), "--limit", "2", "--samples", "2", "--max-new-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "e")]
    assert f"base model {path!r} {what}" in _error(capsys, [*base, "--model", path])
    assert f"reward model {path!r} {what}" in _error(capsys, [*base, "--reward-model", path])
    assert not (tmp_path / "e" / "samples.jsonl").exists()


_ADAPTER = {}


def _adapter(scored, tmp_path_factory):
    """A one-step adapter on the scored fixture's prepared dataset, trained once per module."""
    if "path" not in _ADAPTER:
        out = tmp_path_factory.mktemp("adapter") / "a"
        from offline_infalign.storage import read_manifest

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

    from offline_infalign.scoring import load_scorer, score_texts

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
    from offline_infalign.storage import load_artifact

    first = load_artifact(scored / "samples")[0]["prompt_id"][0]
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model",
                          "tests.test_bad_inputs:raising_reward_always", "--out", str(tmp_path / "s")])
    assert "reward function 'tests.test_bad_inputs:raising_reward_always' raised ZeroDivisionError: division by " \
           f"zero — on prompt_id {first}, completion 0" in err
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model",
                          "tests.test_bad_inputs:scalar_reward", "--out", str(tmp_path / "s")])
    assert "scorer 'tests.test_bad_inputs:scalar_reward' returned shape () for 24 completions" in err


@pytest.mark.parametrize("fn, message", [
    ("half_shape_reward", "returned shape (12, 2) for 24 completions; expected one float per completion, shape (24,)"),
    ("list_of_lists_reward", "returned list that is not an array of numbers"),
    ("string_reward", "returned values of type str_ (e.g. 'good') for 24 completions; expected one float per "
                      "completion, shape (24,)"),
])
def test_reward_of_another_shape_is_refused(scored, tmp_path, capsys, fn, message):
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", f"tests.test_bad_inputs:{fn}",
                          "--out", str(tmp_path / "s")])
    assert f"scorer 'tests.test_bad_inputs:{fn}' {message}" in err


def test_reward_module_that_fails_on_import(tmp_path, capsys, monkeypatch, scored):
    (tmp_path / "broken_reward.py").write_text("raise RuntimeError('missing API key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", "broken_reward:fn",
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
    err = _error(capsys, ["build", "--model", assets["lm"], "--reward-model", reward, "--prompts", assets["prompts"],
                          "--num-samples", "2", "--max-new-tokens", "4", "--device", "cpu", "--out", str(out)])
    assert message in err
    assert not (out / "samples").exists()  # nothing sampled, not even the folder


def raising_reward_always(prompts, completions):
    return [1 / 0 for _ in completions]


# ---- the exact-context-length prompt ----------------------------------------------------------------------------
# A model with a learned position table (GPT-2's wpe) raises IndexError on a position past its context, where a
# RoPE model (the Llama fixtures) silently runs on: so the boundary is tested on a GPT-2 with a 128 context. The
# old ref_logps pass re-encoded the completion and appended EOS, putting prompt + max_new_tokens + 1 tokens
# through the model: IndexError for a 120-token prompt + 8 new tokens. fit_prompts keeps prompt + max_new_tokens
# <= context; nothing after it may add a token.

CONTEXT, NEW = 128, 8


def _gpt2_folder(path, tokenizer: str) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import tiny_bpe_tokenizer, tiny_tokenizer

    tok = tiny_bpe_tokenizer() if tokenizer == "bpe" else tiny_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _prompt_of(tok, n: int) -> str:
    """A text prompt that encodes (tokenization.encode_prompt) to exactly n tokens."""
    from offline_infalign.tokenization import encode_prompt

    pieces = "the movie was very good and the cat was happy".split() + list("abcdefgh")
    text = ""
    while True:
        for piece in pieces:  # the longest step that does not overshoot
            candidate = f"{text} {piece}".strip()
            if len(encode_prompt(tok, candidate)) <= n:
                text = candidate
                break
        else:
            raise AssertionError(f"no prompt of exactly {n} tokens")
        if len(encode_prompt(tok, text)) == n:
            return text


@pytest.fixture(scope="module", params=["word", "bpe"])
def boundary(request, tmp_path_factory):
    from transformers import AutoTokenizer

    from data_builders import prompt_id

    root = tmp_path_factory.mktemp(f"ctx_{request.param}")
    model = _gpt2_folder(root / "gpt2", request.param)
    tok = AutoTokenizer.from_pretrained(model)
    exact, over = _prompt_of(tok, CONTEXT - NEW), _prompt_of(tok, CONTEXT - NEW + 1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (exact, over, "the cat")))
    return {"model": model, "tok": tok, "prompts": str(prompts), "exact": prompt_id(exact),
            "over": prompt_id(over)}


def _boundary_sample(boundary, out, policy):
    return ["sample", "--model", boundary["model"], "--prompts", boundary["prompts"], "--num-samples", "2",
            "--max-new-tokens", str(NEW), "--device", "cpu", "--on-long-prompt", policy, "--out", str(out)]


def _rows(out):
    from offline_infalign.storage import load_artifact

    data, manifest = load_artifact(out)
    return {pid: (len(p), [len(c) for c in cs]) for pid, p, cs in
            zip(data["prompt_id"], data["prompt_ids"], data["completion_ids"])}, manifest


def test_exact_context_prompt_fail(boundary, tmp_path, capsys):
    err = _error(capsys, _boundary_sample(boundary, tmp_path / "o", "fail"))
    assert f"prompt {boundary['over']} has {CONTEXT - NEW + 1} tokens but the model context leaves {CONTEXT - NEW} " \
           "after max_new_tokens" in err


def test_exact_context_prompt_skip(boundary, tmp_path, capsys):
    assert main(_boundary_sample(boundary, tmp_path / "o", "skip")) == 0
    rows, manifest = _rows(tmp_path / "o")
    assert boundary["over"] not in rows and manifest["num_skipped_long"] == 1
    # The prompt of exactly context - max_new_tokens is sampled whole; any completion cut at max_new_tokens
    # (all are, from a random model) fills the context exactly.
    assert rows[boundary["exact"]][0] == CONTEXT - NEW
    assert all(rows[boundary["exact"]][0] + c <= CONTEXT for c in rows[boundary["exact"]][1])


def test_exact_context_prompt_truncate(boundary, tmp_path, capsys):
    assert main(_boundary_sample(boundary, tmp_path / "o", "truncate")) == 0
    rows, manifest = _rows(tmp_path / "o")
    assert manifest["num_truncated"] == 1 and manifest["num_skipped_long"] == 0
    assert rows[boundary["exact"]][0] == CONTEXT - NEW  # untouched
    assert rows[boundary["over"]][0] <= CONTEXT - NEW  # cut from the left, to the same boundary at most
    for length, completions in rows.values():
        assert all(length + c <= CONTEXT for c in completions)
    # What train and eval do with the record: teacher-force prompt + completion ids through the model.
    import torch
    from transformers import AutoModelForCausalLM

    from offline_infalign.storage import load_artifact

    data, _ = load_artifact(tmp_path / "o")
    longest = max((p + c for p, cs in zip(data["prompt_ids"], data["completion_ids"]) for c in cs), key=len)
    model = AutoModelForCausalLM.from_pretrained(boundary["model"])
    with torch.no_grad():
        assert model(torch.tensor([longest])).logits.shape[1] == len(longest) == CONTEXT


def test_fit_prompts_boundary_and_chat_truncation(boundary):
    from offline_infalign.sampling import fit_prompts
    from offline_infalign.tokenization import encode_prompt

    tok, limit = boundary["tok"], CONTEXT - NEW
    exact = {"prompt_id": "e", "prompt": _prompt_of(tok, limit)}
    over = {"prompt_id": "o", "prompt": _prompt_of(tok, limit + 1)}
    assert fit_prompts(tok, [exact], limit, "fail") == ([exact], 0, 0)
    assert fit_prompts(tok, [exact, over], limit, "skip") == ([exact], 0, 1)
    kept, truncated, skipped = fit_prompts(tok, [exact, over], limit, "truncate")
    assert (truncated, skipped, kept[0]) == (1, 0, exact)
    assert len(encode_prompt(tok, kept[1]["prompt"])) <= limit and kept[1]["prompt_id"] == "o"
    chat = {"prompt_id": "c", "prompt": [{"role": "user", "content": _prompt_of(tok, 60)},
                                         {"role": "assistant", "content": "ok"},
                                         {"role": "user", "content": _prompt_of(tok, 70)}]}
    (fitted,), truncated, _ = fit_prompts(tok, [chat], limit, "truncate")
    assert truncated == 1 and len(encode_prompt(tok, fitted["prompt"])) <= limit
    assert fitted["prompt"][-1]["role"] == "user"  # the oldest messages go first


# ---- --out onto a folder of another stage: the error says which stage it holds ----------------------------------


def test_out_onto_another_stages_folder(assets, scored, tmp_path, capsys):
    import shutil

    prepare = ["prepare", "--input", str(scored / "scored"), "--transform", "identity", "--beta", "0.5"]
    err = _error(capsys, [*prepare, "--out", str(scored / "samples")])
    assert f"output folder {str(scored / 'samples')!r} holds a finished 'samples' artifact, and this command " \
           "writes a 'prepared' artifact; choose another --out" in err
    err = _error(capsys, _sample(assets, scored / "prepared"))
    assert "holds a finished 'prepared' artifact, and this command writes a 'samples' artifact" in err
    err = _error(capsys, ["score", "--input", str(scored / "samples"), "--reward-model", "demo", "--out",
                          str(scored / "prepared")])
    assert "holds a finished 'prepared' artifact, and this command writes a 'scored' artifact" in err
    # An unfinished run of another stage (killed after its first chunk) is named too.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(scored / "samples", unfinished)
    (unfinished / "manifest.json").unlink()
    (unfinished / "_work" / "chunks").mkdir(parents=True)
    (unfinished / "_work" / "stage").write_text("samples\n")
    (unfinished / "_work" / "config.json").write_text("{}\n")
    err = _error(capsys, [*prepare, "--out", str(unfinished)])
    assert "holds an unfinished 'samples' artifact, and this command writes a 'prepared' artifact" in err
    # A folder that is no artifact says what it seems to hold.
    err = _error(capsys, [*prepare, "--out", assets["lm"]])
    assert f"output folder {assets['lm']!r} exists and is not an artifact of this stage (it holds a model " \
           "(config.json))" in err
    # Nothing of the refused folders changed: the samples artifact still opens and verifies.
    from offline_infalign.storage import load_artifact

    load_artifact(scored / "samples", stage="samples", verify=True)


def test_a_killed_run_records_its_stage(assets, scored, tmp_path, capsys, monkeypatch):
    """The stage marker is written with the config, before any data: a kill after the first chunk leaves it."""
    from offline_infalign.storage import InjectedFault

    monkeypatch.setenv("INFALIGN_FAULT", "after-chunk:0")
    with pytest.raises(InjectedFault):
        main(_sample(assets, tmp_path / "s", "--chunk-size", "2"))
    monkeypatch.delenv("INFALIGN_FAULT")
    assert (tmp_path / "s" / "_work" / "stage").read_text().strip() == "samples"
    err = _error(capsys, ["prepare", "--input", str(scored / "scored"), "--transform", "identity", "--beta",
                          "0.5", "--out", str(tmp_path / "s")])
    assert "holds an unfinished 'samples' artifact, and this command writes a 'prepared' artifact" in err
    assert main(_sample(assets, tmp_path / "s", "--chunk-size", "2")) == 0  # the same command still resumes


# ---- --verify: the content hash of an input, always (--verify), never (--no-verify) or when small (default) -----

INTEGRITY = "fails its integrity check: its data files do not match the content hash in its manifest"


def _tampered_copy(folder, to):
    """A copy of the artifact `folder` whose data changed after its manifest was written: every prompt_id reversed
    (row counts and K unchanged, so only the content hash can tell)."""
    import gc
    import os
    import shutil

    import datasets

    shutil.copytree(folder, to)
    changed = datasets.load_from_disk(str(to)).map(lambda r: {"prompt_id": r["prompt_id"][::-1]},
                                                   keep_in_memory=True)
    changed.save_to_disk(str(to) + ".new")
    del changed
    gc.collect()
    for f in Path(str(to) + ".new").rglob("*.arrow"):  # a new inode for each: nothing maps the old file's pages
        target = to / f.relative_to(str(to) + ".new")
        shutil.copy(f, str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
    return to


def test_verify_default_small_inputs_and_no_verify(scored, tmp_path, capsys):
    bad = _tampered_copy(scored / "scored", tmp_path / "scored")
    prepare = ["prepare", "--input", str(bad), "--transform", "identity", "--beta", "0.5"]
    assert INTEGRITY in _error(capsys, [*prepare, "--out", str(tmp_path / "p1")])  # small: hashed by default
    assert main([*prepare, "--no-verify", "--out", str(tmp_path / "p2")]) == 0  # told not to hash


def test_verify_forces_the_hash_for_every_stage_that_opens_an_input(assets, scored, tmp_path, capsys, monkeypatch):
    from offline_infalign import storage

    monkeypatch.setattr(storage, "HASH_ALWAYS_BYTES", 0)  # every input is "large": the default does not hash
    samples = _tampered_copy(scored / "samples", tmp_path / "samples")
    scored_bad = _tampered_copy(scored / "scored", tmp_path / "scored")
    prepared = _tampered_copy(scored / "prepared", tmp_path / "prepared")
    prepare = ["prepare", "--input", str(scored_bad), "--transform", "identity", "--beta", "0.5"]
    assert main([*prepare, "--out", str(tmp_path / "p1")]) == 0
    assert INTEGRITY in _error(capsys, [*prepare, "--verify", "--out", str(tmp_path / "p2")])
    score = ["score", "--input", str(samples), "--reward-model", "demo", "--verify", "--out", str(tmp_path / "s")]
    assert INTEGRITY in _error(capsys, score)
    train = ["train", "--dataset", str(prepared), "--model", assets["lm"], "--loss", "tilted_pairwise", "--verify",
             "--max-steps", "1", "--out", str(tmp_path / "t")]
    assert INTEGRITY in _error(capsys, train)


def test_verify_in_merge_and_eval(assets, scored, tmp_path_factory, tmp_path, capsys, monkeypatch):
    import shutil

    from offline_infalign import storage

    shards = []
    for i in (0, 1):
        out = tmp_path / f"shard{i}"
        assert main(_sample(assets, out, "--shard", f"{i}/2")) == 0
        shards.append(str(_tampered_copy(out, tmp_path / f"bad{i}")) if i else str(out))
    monkeypatch.setattr(storage, "HASH_ALWAYS_BYTES", 0)
    assert INTEGRITY in _error(capsys, ["merge", "--inputs", *shards, "--verify", "--out", str(tmp_path / "m")])
    # eval reads its prompts from the adapter's prepared dataset: train on a copy, then change the copy.
    prepared = tmp_path / "prepared"
    shutil.copytree(scored / "prepared", prepared)
    adapter = tmp_path / "adapter"
    assert main(["train", "--dataset", str(prepared), "--model", assets["lm"], "--loss", "tilted_pairwise",
                 "--max-steps", "1", "--out", str(adapter)]) == 0
    shutil.rmtree(prepared)
    _tampered_copy(scored / "prepared", prepared)
    capsys.readouterr()
    err = _error(capsys, ["eval", "--policy", str(adapter), "--limit", "2", "--samples", "2", "--max-new-tokens", "4",
                          "--device", "cpu", "--verify", "--out", str(tmp_path / "e")])
    assert INTEGRITY in err


def test_config_file_not_utf8_not_yaml_or_a_folder(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"prompts: p.jsonl\nmodel: caf\xe9\n")
    err = _error(capsys, ["sample", "--config", str(cfg)])
    assert f"config file {str(cfg)!r} is not UTF-8 text: byte 0xe9 at byte offset 27 (line 2)" in err
    cfg.write_text("model: [a\n")
    err = _error(capsys, ["sample", "--config", str(cfg)])
    assert f"config file {str(cfg)!r} is not valid YAML: while parsing a flow sequence" in err  # one line
    assert f"config file {str(tmp_path)!r} is a folder, not a file" in _error(capsys, ["sample", "--config",
                                                                                        str(tmp_path)])
