"""Small prepared datasets (pairs / listwise / bon) with the columns and manifest of docs/design.md, for trainer tests.

Stored reference log-probs are computed with the package's own tokenization and `completion_logps` on the saved
tiny model, so a live reference forward must reproduce them.

`scored_with_ids` builds a scored artifact as the sampler writes it (docs/design.md; docs/math.md §9): the token
ids are the record (`prompt_ids`, `completion_ids` ending with a stop id for finish "stop", none for a completion
cut at max_new_tokens), the text is decoded from them without the stop token and with special tokens skipped,
and `ref_logps` are teacher-forced sums over exactly those ids. With the byte-level BPE fixture the ids include
byte pieces of multi-byte characters and special tokens, so the text does not encode back to the same ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from tiny_models import BPE_CORPUS, WORDS, save_tiny_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from offline_infalign.artifacts.storage import save_artifact
from offline_infalign.core.calibration import calibrate
from offline_infalign.core.transforms import Transform
from offline_infalign.models.logprobs import completion_logps, pad_pairs
from offline_infalign.models.tokenization import encode_completion, encode_prompt

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


# ---- scored artifacts with token ids (the sampler's record, docs/math.md §9) -----------------------------------

MAX_NEW_TOKENS = 6


def stop_ids(tok) -> list[int]:
    """The fixture models' stop set: eos, and <eot> for the BPE model (its generation config lists both)."""
    eot = tok.convert_tokens_to_ids("<eot>") if "<eot>" in tok.get_vocab() else None
    return sorted({tok.eos_token_id} | ({eot} if eot is not None else set()))


def sampled_ids(tok, rng, cut: bool, stop: int) -> list[int]:
    """A completion as a sampler could emit it: body ids from the whole vocabulary apart from pad, bos and the
    stop set (byte pieces and special tokens included), then the stop id, or MAX_NEW_TOKENS ids and no stop."""
    banned = {tok.pad_token_id, tok.bos_token_id, *stop_ids(tok)}
    allowed = np.array([i for i in range(len(tok)) if i not in banned])
    n = MAX_NEW_TOKENS if cut else int(rng.integers(1, MAX_NEW_TOKENS))
    return rng.choice(allowed, size=n).tolist() + ([] if cut else [stop])


def ids_logps(model_dir, prompt_ids, completion_ids) -> list[float]:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return completion_logps(model, **pad_pairs(prompt_ids, completion_ids, tok.pad_token_id)).tolist()


def scored_with_ids(model_dir, num_prompts=6, k=4, seed=0, chat=False, rewards=None):
    """A scored `Dataset` with the sampler's columns (see the module docstring). Completion 0 of every prompt is
    cut at MAX_NEW_TOKENS; the others stop, alternately on each id of the stop set. `rewards` (P, K) replaces
    the random rewards."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rng = np.random.default_rng(seed)
    stops = stop_ids(tok)
    bpe = "<eot>" in tok.get_vocab()
    rows = []
    for p in range(num_prompts):
        prompt = (BPE_CORPUS[p % 6][: 12 + p] if bpe else " ".join(rng.choice(WORDS[:30], size=3)))
        if chat:
            prompt = [{"role": "user", "content": prompt}]
        ids = [sampled_ids(tok, rng, cut=i == 0, stop=stops[i % len(stops)]) for i in range(k)]
        finish = ["length" if i == 0 else "stop" for i in range(k)]
        text = [tok.decode(c[:-1] if f == "stop" else c, skip_special_tokens=True) for c, f in zip(ids, finish)]
        rows.append({"prompt_id": f"p{p}", "prompt": prompt, "prompt_ids": encode_prompt(tok, prompt),
                     "completions": text, "completion_ids": ids, "finish_reasons": finish,
                     "rewards": (rng.normal(size=k) if rewards is None else np.asarray(rewards[p])).tolist()})
    flat_p = [r["prompt_ids"] for r in rows for _ in range(k)]
    flat_c = [c for r in rows for c in r["completion_ids"]]
    lps = ids_logps(model_dir, flat_p, flat_c)
    for i, r in enumerate(rows):
        r["ref_logps"] = lps[i * k:(i + 1) * k]
    return Dataset.from_list(rows)


def save_scored(out, scored, model_dir, **manifest_extra) -> Path:
    """`scored` as a scored artifact whose manifest records what the sampler records (docs/design.md)."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    finish = [f for row in scored["finish_reasons"] for f in row] if "finish_reasons" in scored.column_names else []
    manifest = {"stage": "scored", "model": str(model_dir), "tokenizer": str(model_dir), "reward_model": "test",
                "num_samples": len(scored[0]["rewards"]), "seed": 0, "stop_token_ids": stop_ids(tok),
                "cut_fraction": finish.count("length") / max(len(finish), 1), "temperature": 1.0, "top_p": 1.0,
                "top_k": 0, "tempered": False, "package_version": "test", "config": {}}
    manifest.update(manifest_extra)
    save_artifact(scored, out, manifest)
    return Path(out)


def make_prepared_with_ids(root, kind: str, model_dir, beta=0.5, num_prompts=6, k=4, chat=False) -> Path:
    """A prepared dataset of `kind` made by `prepare` from `scored_with_ids` (so its rows carry ids)."""
    from offline_infalign.kinds.preparation import prepare

    scored = scored_with_ids(model_dir, num_prompts=num_prompts, k=k, chat=chat)
    data = prepare(scored, kind, TRANSFORM, beta, test_fraction=0.0).data
    out = Path(root) / f"prepared_ids_{kind}"
    save_artifact(data, out, {"stage": "prepared", "kind": kind, "transform": TRANSFORM.name, "tilt": TRANSFORM.tilt,
                              "beta": beta, "procedure": "bon", "n": 4, "num_samples": k, "model": str(model_dir),
                              "tokenizer": str(model_dir), "config": {}})
    return out


def char_reward(prompts, completions):
    """A reward for pipeline tests: the completion's length in characters, plus a little of the prompt's."""
    return [len(c) + 0.01 * len(p) for p, c in zip(prompts, completions)]
