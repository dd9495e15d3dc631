"""Shared by the `--engine ray` tests: tiny model, reward model and prompts, the one-process reference
artifacts, the stage configs, and the comparison of an artifact with its reference."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tiny_models import save_tiny_lm, save_tiny_reward_model

from offline_infalign.artifacts.storage import load_artifact
from offline_infalign.config import SampleConfig, ScoreConfig, load_config
from offline_infalign.engines import ENGINE_FIELDS
from offline_infalign.stages.sample import run_sample
from offline_infalign.stages.score import run_score

TESTS = Path(__file__).parent
# Words of the tiny vocabularies; 7 prompts in chunks of 2: 4 chunks, the last one short.
PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "please tell me a review", "the dog was very happy", "what about the service"]
CHUNKS = 4
RAY = dict(engine="ray", workers=2)
SAMPLE = dict(num_samples=3, max_new_tokens=6, chunk_size=2, batch_size=2, device="cpu")
SCORE = dict(chunk_size=2, batch_size=4, device="cpu")


def references(root: Path) -> SimpleNamespace:
    """Prompts, a tiny LM (byte-level BPE, two stop ids), a tiny reward model, and the one-process (local
    engine) samples and scored artifacts made from them."""
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    s = SimpleNamespace(root=root, prompts=prompts, lm=save_tiny_lm(root / "lm", tokenizer="bpe"),
                        rm=save_tiny_reward_model(root / "rm"))
    s.ref_sample, s.ref_score = root / "ref_sample", root / "ref_score"
    run_sample(sample_cfg(s, s.ref_sample), progress=False)
    run_score(score_cfg(s, s.ref_score), progress=False)
    return s


def sample_cfg(s, out, **kw) -> SampleConfig:
    return load_config(SampleConfig, None, {"prompts": str(s.prompts), "model": str(s.lm), "out": str(out),
                                            **SAMPLE, **kw})


def score_cfg(s, out, **kw) -> ScoreConfig:
    return load_config(ScoreConfig, None, {"input": str(s.ref_sample), "out": str(out), "reward_model": str(s.rm),
                                           **SCORE, **kw})


def rows(path) -> list[dict]:
    data, _ = load_artifact(path, verify=True)
    return data.to_list()


def assert_same_artifact(out: Path, ref: Path) -> None:
    """Row for row, hash for hash, and the manifest but for the engine keys of its config (and its own path)."""
    assert rows(out) == rows(ref)
    got, want = (json.loads((p / "manifest.json").read_text()) for p in (out, ref))
    assert got["content_hash"] == want["content_hash"]
    for m, path in ((got, out), (want, ref)):
        for key in ENGINE_FIELDS:
            m["config"].pop(key)
        m["config"]["out"] = m["config"]["out"].replace(str(path), "<out>")
    assert got == want
    assert not (out / "_work").exists()
