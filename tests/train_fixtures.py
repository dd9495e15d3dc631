"""Small prepared datasets (pairs / listwise / bon) with the columns and manifest of docs/design.md, for trainer tests.

Stored reference log-probs are computed with the package's own tokenization and `completion_logps` on the saved
tiny model, so a live reference forward must reproduce them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from tiny_models import WORDS, save_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from offline_infalign.core.calibration import calibrate
from offline_infalign.core.transforms import Transform
from offline_infalign.logprobs import completion_logps, pad_pairs
from offline_infalign.storage import save_artifact
from offline_infalign.tokenization import encode_completion, encode_prompt

TRANSFORM = Transform("exp", 3.0)


def ref_logps(model_dir, prompts, completions) -> list[float]:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batch = pad_pairs([encode_prompt(tok, p) for p in prompts], [encode_completion(tok, c) for c in completions],
                      tok.pad_token_id)
    with torch.no_grad():
        return completion_logps(model, **batch).tolist()


def groups(num_prompts=6, k=4, seed=0, chat=False):
    """num_prompts prompts (chat message lists if chat) with k random completions, rewards, targets Φ(c)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(num_prompts):
        prompt = " ".join(rng.choice(WORDS[:30], size=3))
        if chat:
            prompt = [{"role": "user", "content": prompt}]
        completions = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 4)))) for _ in range(k)]
        rewards = rng.normal(size=k)
        u = calibrate(rewards)
        out.append({"prompt_id": f"p{p}", "prompt": prompt, "completions": completions,
                    "rewards": rewards.tolist(), "calibrated_rewards": u.tolist(), "targets": TRANSFORM(u).tolist()})
    return out


def rows(kind: str, gs, beta: float):
    if kind == "listwise":
        return gs
    if kind == "bon":
        out = []
        for g in gs:
            w = np.exp(np.asarray(g["targets"]) / beta)
            w /= w.sum()
            for i, c in enumerate(g["completions"]):
                out.append({"prompt_id": g["prompt_id"], "prompt": g["prompt"], "completion": c,
                            "reward": g["rewards"][i], "calibrated_reward": g["calibrated_rewards"][i],
                            "target": g["targets"][i], "weight": float(w[i])})
        return out
    out = []
    for g in gs:
        k = len(g["completions"])
        for i in range(k):
            for j in range(i + 1, k):
                a, b = (i, j) if g["targets"][i] >= g["targets"][j] else (j, i)
                margin = g["targets"][a] - g["targets"][b]
                out.append({"prompt_id": g["prompt_id"], "prompt": g["prompt"], "chosen": g["completions"][a],
                            "rejected": g["completions"][b], "target_margin": margin,
                            "soft_label": float(1 / (1 + np.exp(-margin))), "weight": 1.0})
    return out


def add_reference(kind: str, rs, model_dir):
    if kind == "pairs":
        c = ref_logps(model_dir, [r["prompt"] for r in rs], [r["chosen"] for r in rs])
        j = ref_logps(model_dir, [r["prompt"] for r in rs], [r["rejected"] for r in rs])
        for r, a, b in zip(rs, c, j):
            r["ref_chosen_logps"], r["ref_rejected_logps"] = a, b
    elif kind == "bon":
        for r, a in zip(rs, ref_logps(model_dir, [r["prompt"] for r in rs], [r["completion"] for r in rs])):
            r["ref_logp"] = a
    else:
        for r in rs:
            r["ref_logps"] = ref_logps(model_dir, [r["prompt"]] * len(r["completions"]), r["completions"])
    return rs


def save_prepared(out, kind: str, rs, model_dir, beta: float, transform=TRANSFORM, num_samples=4, **manifest_extra):
    ds = Dataset.from_list(rs)
    data = DatasetDict(train=ds, test=ds.select(range(min(2, len(ds)))))
    manifest = {"stage": "prepared", "kind": kind, "transform": transform.name, "tilt": transform.tilt,
                "beta": beta, "procedure": "bon", "n": 4, "num_samples": num_samples, "model": str(model_dir),
                "tokenizer": str(model_dir), "reward_model": "test", "seed": 0, "input_hash": "test",
                "package_version": "test", "config": {}}
    manifest.update(manifest_extra)
    save_artifact(data, out, manifest)
    return Path(out)


def make_prepared(root, kind: str, model_dir=None, beta=0.5, num_prompts=6, k=4, with_reference=True,
                  chat=False, **manifest_extra) -> tuple[Path, Path]:
    """(dataset dir, model dir) of a small prepared dataset of `kind`."""
    root = Path(root)
    model_dir = Path(model_dir) if model_dir else save_tiny_lm(root / "model")
    rs = rows(kind, groups(num_prompts, k, chat=chat), beta)
    if with_reference:
        rs = add_reference(kind, rs, model_dir)
    return save_prepared(root / f"prepared_{kind}", kind, rs, model_dir, beta, num_samples=k,
                         **manifest_extra), model_dir
