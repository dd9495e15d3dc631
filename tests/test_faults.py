"""Every stage killed at every named instant, then rerun with the same command, equals an uninterrupted run; and
every stage locks its output folder for the run (README: Reliability).

The kill is storage.fault_point: $INFALIGN_FAULT names the instant and the stage unwinds with InjectedFault, a
BaseException that no `except Exception` in a stage can swallow, as a kill would. Chunked stages (sample,
score) are killed after each chunk is saved (before and after its rename); every stage inside its finishing
save; sample's forward pass (a bfloat16 sampler, float32 ref_logps) after each of its chunks too. train's kill
inside a checkpoint write is in tests/test_train_resume.py (its checkpoints, not
storage's points).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from tiny_models import save_tiny_lm

from offline_infalign.artifacts.storage import InjectedFault, load_artifact, output_lock
from offline_infalign.config import (
    DemoConfig,
    EvalConfig,
    MergeConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    load_config,
)
from offline_infalign.core.errors import InfalignError
from offline_infalign.stages import evaluate as evaluate_stage
from offline_infalign.stages.merge import run_merge
from offline_infalign.stages.prepare import run_prepare
from offline_infalign.stages.sample import run_sample
from offline_infalign.stages.score import run_score

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "please tell me a review"]
CHUNKS = 3  # 5 prompts, chunk_size 2
FINISH = ["finish:saved", "finish:data-moving", "finish:before-manifest", "finish:after-manifest"]
CHUNKED = [f"{where}:{i}" for i in range(CHUNKS) for where in ("chunk-saved", "after-chunk")] + FINISH


def length_reward(prompts, completions):
    """A deterministic reward that tells completions apart (the scores differ from chunk to chunk)."""
    return [len(c) + 0.1 * len(p) for p, c in zip(prompts, completions)]


def _sample_cfg(setup, out, **kw):
    return load_config(SampleConfig, None, dict(prompts=str(setup.prompts), model=str(setup.lm), out=str(out),
                                                num_samples=3, max_new_tokens=4, chunk_size=2, batch_size=2,
                                                device="cpu", **kw))


def _score_cfg(setup, out):
    return load_config(ScoreConfig, None, dict(input=str(setup.ref["sample"]), out=str(out), chunk_size=2,
                                               reward_model="test_faults:length_reward", device="cpu"))


def _prepare_cfg(setup, out):
    return load_config(PrepareConfig, None, dict(input=str(setup.ref["score"]), out=str(out), kind="pairs",
                                                 transform="identity", beta=1.0, test_fraction=0.4))


def _merge_cfg(setup, out):
    return load_config(MergeConfig, None, dict(inputs=[str(s) for s in setup.shards], out=str(out)))


# A bfloat16 sampler stores float32 teacher-forced ref_logps: a second pass after sampling, over the written
# chunks, with points of its own (`forward:i`: before its chunk i is written; forward:0 resumes through the
# sampling phase, a later one without it: tests/test_ref_logps.py); one kill inside the sampling phase and one
# in the finishing save stand for the points the plain sample run already covers.
FORWARD = ["after-chunk:1", "forward:0", f"forward:{CHUNKS - 1}", "finish:before-manifest"]

STAGES = {
    "sample": (CHUNKED, lambda setup, out: run_sample(_sample_cfg(setup, out), progress=False)),
    "sample_forward": (FORWARD, lambda setup, out: run_sample(_sample_cfg(setup, out, dtype="bfloat16"),
                                                              progress=False)),
    "score": (CHUNKED, lambda setup, out: run_score(_score_cfg(setup, out), progress=False)),
    "prepare": (FINISH, lambda setup, out: run_prepare(_prepare_cfg(setup, out))),
    "merge": (FINISH, lambda setup, out: run_merge(_merge_cfg(setup, out))),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One uninterrupted reference run per stage: samples, scored, prepared, and merged from two shards."""
    root = tmp_path_factory.mktemp("faults")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    s = SimpleNamespace(root=root, prompts=prompts, lm=save_tiny_lm(root / "lm"), ref={})
    s.shards = [root / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(s.shards):
        run_sample(_sample_cfg(s, shard, shard=f"{i}/2"), progress=False)
    for name, (_, run) in STAGES.items():  # in pipeline order: each reference is the next one's input
        s.ref[name] = root / f"ref_{name}"
        run(s, s.ref[name])
    return s


def _rows(path):
    data, _ = load_artifact(path, verify=True)
    return {k: v.to_list() for k, v in data.items()} if hasattr(data, "keys") else data.to_list()


def _manifest_text(manifest, out):
    """The manifest with its own folder's path taken out: everything else must be equal."""
    return json.dumps(manifest, sort_keys=True, default=str).replace(str(out), "<out>")


@pytest.mark.parametrize("stage,point", [(stage, p) for stage, (points, _) in STAGES.items() for p in points])
def test_killed_at_each_point_the_same_command_resumes_to_the_uninterrupted_result(setup, tmp_path, monkeypatch,
                                                                                   stage, point):
    points, run = STAGES[stage]
    out = tmp_path / stage
    monkeypatch.setenv("INFALIGN_FAULT", point)
    with pytest.raises(InjectedFault, match=point):
        run(setup, out)
    monkeypatch.delenv("INFALIGN_FAULT")
    manifest = run(setup, out)
    ref = setup.ref[stage]
    reference = json.loads((ref / "manifest.json").read_text())
    assert manifest["content_hash"] == reference["content_hash"]
    assert _manifest_text(manifest, out) == _manifest_text(reference, ref)
    assert _rows(out) == _rows(ref)
    assert not (out / "_work").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())


def test_the_references_are_not_trivial(setup):
    """The comparisons above mean something: several chunks, K completions, distinct rewards, both splits."""
    samples = _rows(setup.ref["sample"])
    assert len(samples) == len(PROMPTS) and all(len(r["completions"]) == 3 for r in samples)
    rewards = [x for r in _rows(setup.ref["score"]) for x in r["rewards"]]
    assert len(set(rewards)) > 3
    prepared = _rows(setup.ref["prepare"])
    assert prepared["train"] and prepared["test"]
    assert [r["prompt_id"] for r in _rows(setup.ref["merge"])] == [r["prompt_id"] for r in samples]


# ---- the output lock: every stage, refused at once, naming the holder ----------------------------------------


def _eval_cfg(setup, out):
    return load_config(EvalConfig, None, dict(policy=str(setup.root), model=str(setup.lm), reward_model="demo",
                                              prompts=str(setup.prompts), out=str(out)))


LOCKED = {  # each run is refused before it reads its input or loads a model (sample and score check first that
    # the model and reward exist, preflight.py; the other inputs need not exist)
    "sample": lambda setup, out: run_sample(_sample_cfg(setup, out), progress=False),
    "score": lambda setup, out: run_score(_score_cfg(setup, out), progress=False),
    "prepare": lambda setup, out: run_prepare(_prepare_cfg(setup, out)),
    "merge": lambda setup, out: run_merge(_merge_cfg(setup, out)),
    "eval": lambda setup, out: evaluate_stage.evaluate(_eval_cfg(setup, out)),
    "demo": lambda setup, out: __import__("offline_infalign.demo.run", fromlist=["run_demo"]).run_demo(
        load_config(DemoConfig, None, dict(out=str(out)))),
}


@pytest.mark.parametrize("stage", list(LOCKED))
def test_every_stage_refuses_a_folder_another_run_is_writing(stage, tmp_path, monkeypatch):
    setup = SimpleNamespace(root=tmp_path / "adapter", prompts=tmp_path / "p.jsonl", lm=save_tiny_lm(tmp_path / "lm"),
                            ref={"sample": tmp_path / "s", "score": tmp_path / "sc"},
                            shards=[tmp_path / "a", tmp_path / "b"])
    out = tmp_path / "out"
    # A lock held through another open file counts as another writer, in this process too (flock semantics).
    with output_lock(out):
        with pytest.raises(InfalignError, match=rf"being written by another run \(pid {os.getpid()}\)"):
            LOCKED[stage](setup, out)
        assert sorted(p.name for p in Path(out).iterdir()) == [".infalign.lock"]  # nothing was written
    assert not (tmp_path / "adapter").exists()  # nor anywhere else (eval's policy folder is never created)


def test_a_second_sample_run_is_refused_while_the_first_holds_the_folder(setup, tmp_path, monkeypatch):
    """A real second run: the first is stopped inside its run (after its first chunk) holding the lock."""
    from offline_infalign.stages import sample as sample_stage

    out = tmp_path / "racing"
    real = sample_stage._sample_chunk
    seen = []

    def second_run_meanwhile(*args, **kwargs):
        if not seen:
            with pytest.raises(InfalignError, match=rf"\(pid {os.getpid()}\)") as exc:
                run_sample(_sample_cfg(setup, out, seed=1), progress=False)  # another seed, even
            seen.append(str(exc.value))
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_stage, "_sample_chunk", second_run_meanwhile)
    manifest = run_sample(_sample_cfg(setup, out), progress=False)
    assert seen and manifest["content_hash"] == json.loads((setup.ref["sample"] / "manifest.json").read_text())[
        "content_hash"]
    with output_lock(out):  # released when the run ended
        pass
