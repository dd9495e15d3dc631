"""Rewards and data that cannot make a dataset are one line on stderr (exit 2), or a recorded warning, never a
silent exit 0: a reward function that exits (SystemExit from a library) or raises another BaseException, a reward
returning a tensor that requires grad (read detached), rewards tied within every prompt, a test split holding every
prompt, a prompt file without prompts. A real Ctrl-C still interrupts (exit 130)."""

import json

import pytest

from offline_infalign.cli import main
from tests.bad_input_helpers import error_line, make_assets, make_build, nothing_written, reward_module

REWARDS = """
import sys

import torch


def exits(prompts, completions):
    sys.exit(3)


def exits_quietly(prompts, completions):
    sys.exit()


class Abort(BaseException):
    pass


def aborts(prompts, completions):
    raise Abort("the library gave up")


def interrupted(prompts, completions):
    raise KeyboardInterrupt


def with_grad(prompts, completions):
    w = torch.tensor(2.0, requires_grad=True)
    return w * torch.tensor([float(len(c)) for c in completions])


def bf16_tensors(prompts, completions):
    return [torch.tensor(len(c) / 4, dtype=torch.bfloat16, requires_grad=True) for c in completions]


def lengths(prompts, completions):
    return [float(len(c)) for c in completions]


def constant(prompts, completions):
    return [1.0] * len(completions)


def tied_on_most(prompts, completions):
    # on prompts mentioning 'movie' a value of the completion's text, 0 on the others: those are all tied
    return [len(c) + sum(map(ord, c)) / 1000 if "movie" in p else 0.0 for p, c in zip(prompts, completions)]
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("bad_rewards"))


@pytest.fixture(scope="module")
def build(assets, tmp_path_factory):
    return make_build(assets, tmp_path_factory.mktemp("build") / "b")


@pytest.fixture
def rewards(tmp_path, monkeypatch):
    """'module:' of the reward functions above, importable for this test under a name of its own."""
    return reward_module(tmp_path, monkeypatch, f"rewards_{tmp_path.name.replace('-', '_')}", REWARDS)


def score_argv(build, reward, out):
    return ["score", "--input", str(build / "samples"), "--reward-model", reward, "--out", str(out)]


# ---- rewards that raise BaseExceptions ----------------------------------------------------------------------------


@pytest.mark.parametrize("fn, said", [
    ("exits", "raised SystemExit (it called sys.exit(3), directly or through a library)"),
    ("exits_quietly", "raised SystemExit (it called sys.exit(), directly or through a library)"),
    ("aborts", "raised Abort: the library gave up"),
])
def test_a_reward_that_exits_is_one_line_in_score_and_build(assets, build, rewards, tmp_path, capsys, fn, said):
    err = error_line(capsys, score_argv(build, rewards + fn, tmp_path / "s"))
    assert f"reward function '{rewards}{fn}' {said} — on prompt_id " in err
    assert nothing_written(tmp_path / "s")
    err = error_line(capsys, ["build", "--model", assets["lm"], "--reward-model", rewards + fn, "--prompts",
                              assets["prompts"], "--num-samples", "2", "--max-new-tokens", "3", "--device", "cpu",
                              "--out", str(tmp_path / "b")])
    assert f"the reward was tried on one completion before sampling and failed: reward function '{rewards}{fn}' " \
           f"{said}" in err
    assert not (tmp_path / "b" / "samples").exists()  # refused before anything was sampled


def test_ctrl_c_in_a_reward_still_interrupts(build, rewards, tmp_path, capsys):
    assert main(score_argv(build, rewards + "interrupted", tmp_path / "s")) == 130
    assert "interrupted; finished chunks are kept, rerun the same command to resume" in capsys.readouterr().err


def test_a_reward_returning_tensors_that_require_grad_is_read_detached(build, rewards, tmp_path):
    import datasets

    assert main(score_argv(build, rewards + "with_grad", tmp_path / "grad")) == 0
    assert main(score_argv(build, rewards + "bf16_tensors", tmp_path / "bf16")) == 0
    assert main(score_argv(build, rewards + "lengths", tmp_path / "plain")) == 0
    plain = datasets.load_from_disk(str(tmp_path / "plain"))["rewards"]
    assert datasets.load_from_disk(str(tmp_path / "grad"))["rewards"] == [[2 * r for r in row] for row in plain]
    # bfloat16 holds len/4 exactly for these short completions (a few multiples of 1/4)
    assert datasets.load_from_disk(str(tmp_path / "bf16"))["rewards"] == [[r / 4 for r in row] for row in plain]


# ---- tied rewards ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pairs", "listwise", "bon"])
def test_rewards_tied_within_every_prompt_are_refused(build, rewards, tmp_path, capsys, kind):
    assert main(score_argv(build, rewards + "constant", tmp_path / "s")) == 0
    err = error_line(capsys, ["prepare", "--input", str(tmp_path / "s"), "--kind", kind, "--transform", "identity",
                              "--beta", "0.5", "--out", str(tmp_path / "p")])
    assert "every one of the 6 prompts has all K=4 rewards equal (e.g. prompt_id " in err
    assert f"the reward gives no preference between completions, so a {kind} dataset would carry none" in err
    assert nothing_written(tmp_path / "p")


def test_many_tied_prompts_are_a_warning(build, rewards, tmp_path, capsys):
    """Two of the six prompts mention 'movie'; the other four get reward 0 for every completion: pairs leaves them
    out, listwise keeps them with flat targets; both record the warning (manifest, then model card and report)."""
    assert main(score_argv(build, rewards + "tied_on_most", tmp_path / "s")) == 0
    for kind, effect in (("pairs", "they give no pairs"), ("listwise", "their targets are flat")):
        capsys.readouterr()
        assert main(["prepare", "--input", str(tmp_path / "s"), "--kind", kind, "--transform", "identity", "--beta",
                     "0.5", "--test-fraction", "0", "--out", str(tmp_path / kind)]) == 0
        manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
        warning = f"4 of 6 prompts (67%) have all K=4 rewards equal: {effect}"
        assert any(w.startswith(warning) for w in manifest["warnings"]), manifest["warnings"]
        assert f"WARNING: {warning}" in capsys.readouterr().out
        assert manifest["num_prompts"] == {"train": 2 if kind == "pairs" else 6, "test": 0}


def test_a_train_split_whose_prompts_are_all_tied():
    """Pairs: train prompts with all rewards equal give no train rows though the test split has some: refused,
    naming the counts. Listwise keeps those prompts (flat targets) and records the warning."""
    from datasets import Dataset

    from offline_infalign.core.errors import InfalignError
    from offline_infalign.core.transforms import Transform
    from offline_infalign.kinds.preparation import is_test_prompt, prepare

    ids = [f"q{i}" for i in range(40)]
    held_out = [is_test_prompt(pid, 0.5) for pid in ids]
    scored = Dataset.from_dict({
        "prompt_id": ids, "prompt": [f"prompt {pid}" for pid in ids], "completions": [["a", "b", "c"]] * len(ids),
        "rewards": [[1.0, 2.0, 3.0] if t else [0.0, 0.0, 0.0] for t in held_out], "ref_logps": [[-1.0] * 3] * len(ids)})
    train, test = held_out.count(False), held_out.count(True)
    assert train and test
    with pytest.raises(InfalignError) as err:
        prepare(scored, "pairs", Transform("identity"), 0.5, test_fraction=0.5)
    assert str(err.value) == (f"the train split would have no pairs rows: its {train} prompt(s) (of 40; {test} held "
                              "out for test) have all their rewards equal, so no pair has a winner")
    listwise = prepare(scored, "listwise", Transform("identity"), 0.5, test_fraction=0.5)
    assert len(listwise.data["train"]) == train
    assert listwise.warnings[0].startswith(f"{train} of 40 prompts ({train / 40:.0%}) have all K=3 rewards equal")


def test_a_test_fraction_that_holds_out_every_prompt(build, tmp_path, capsys):
    err = error_line(capsys, ["prepare", "--input", str(build / "scored"), "--transform", "identity", "--beta", "0.5",
                              "--test-fraction", "0.999", "--out", str(tmp_path / "p")])
    assert ("test_fraction 0.999 puts all 6 prompts in the test split and none in train (held-out prompts are "
            "chosen by prompt_id hash); lower --test-fraction") in err
    assert nothing_written(tmp_path / "p")


# ---- prompt files without prompts -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, content, said", [
    ("blank.jsonl", "\n\n   \n\n", "holds no prompts: its 4 line(s) are all blank"),
    ("empty.json", "[]", "holds no prompts: it is an empty JSON list"),
])
def test_a_prompt_file_without_prompts(assets, tmp_path, capsys, name, content, said):
    path = tmp_path / name
    path.write_text(content)
    err = error_line(capsys, ["sample", "--model", assets["lm"], "--prompts", str(path), "--device", "cpu",
                              "--out", str(tmp_path / "o")])
    assert f"prompt file {str(path)!r} {said}" in err


def test_a_parquet_prompt_file_without_rows(assets, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    err = error_line(capsys, ["sample", "--model", assets["lm"], "--prompts", str(path), "--device", "cpu",
                              "--out", str(tmp_path / "o")])
    assert f"prompt file {str(path)!r} holds no prompts: the Parquet table has 0 rows" in err
