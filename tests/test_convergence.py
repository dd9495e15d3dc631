"""Convergence to the exact tilted policy (docs/math.md §1/§2/§6) through the real trainer, for each tilted loss.

The toy: one prompt x, and completions that are one word w from WORDS8 followed by EOS (the package always
appends EOS). The base policy of the toy is the tiny model restricted to these 8 completions,
    q_ref(w) = π_ref(w EOS | x) / Σ_w' π_ref(w' EOS | x),
which is what the dataset is sampled from, so everything is exact and cheap:
    C(w)  = Σ_{z: r(z) < r(w)} q_ref(z) + ½ q_ref(w)        (docs/math.md §2; rewards are distinct, so no other ties)
    π*(w) ∝ q_ref(w) · exp(Φ(C(w)) / β).
The dataset holds P groups of K completions sampled from q_ref (seeded), calibrated within each group
(`core.calibration`, mid-rank) exactly as `prepare` does, and is written as a prepared artifact of each kind.
Training goes through `trainer.train` (LoRA, stored reference log-probs); the trained policy's distribution
over the same 8 completions is compared with π* in total variation. The model can also put mass on other
sequences; the losses only constrain log-ratios between the dataset's completions (the pointwise loss also
their level, which is feasible because the 8 completions hold ~0.2% of π_ref's mass), so the comparison is on
the toy's support, renormalized. Initially TV(q_ref, π*) ≈ 0.3, so the check can fail.

Finite K biases the calibrated rewards toward ½ by O(1/K) and Φ is nonlinear, so the reachable TV is ~0.01,
not 0: the 0.05 bound leaves room for that and for optimization error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_causal_lm, tiny_tokenizer
from train_fixtures import save_prepared

from offline_infalign.config import TrainConfig
from offline_infalign.core.calibration import calibrate
from offline_infalign.core.transforms import Transform
from offline_infalign.models.logprobs import completion_logps, pad_pairs
from offline_infalign.models.tokenization import encode_completion, encode_prompt

PROMPT = "tell me about the movie"
WORDS8 = ["good", "bad", "great", "awful", "fine", "ok", "nice", "boring"]
REWARDS = np.array([5.0, 0.0, 7.0, 1.0, 4.0, 3.0, 6.0, 2.0])  # distinct: one reward per completion
TRANSFORM = Transform("exp", 2.0)
BETA = 0.4
NUM_GROUPS, K = 24, 64  # P prompts' worth of groups (same prompt text) × K base samples each
# Self-normalized importance weights (weighted SFT) are the noisiest estimator of π*: 24 groups leave a sampling
# TV of ~0.035. Its rows merge into 8 (see below), so 4× more groups cost nothing in training time.
NUM_GROUPS_BON = 96
DATA_SEED = 0

# lm_head too: the tiny random model's logits span < 1 nat, and its final RMSNorm bounds the hidden state, so
# adapting only the inner linears could not reach log-ratios of ~2 nats.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
# loss → (learning rate, max steps, rows per step). Chosen so each run takes a few seconds on one CPU thread.
SETTINGS = {
    "tilted_pairwise": (3e-2, 150, 64),
    "tilted_sigmoid": (5e-2, 150, 64),
    "listwise": (5e-2, 120, 4),
    "pointwise": (5e-2, 150, 4),
    "weighted_sft": (1e-2, 300, 8),
}


def exact_target(q_ref: np.ndarray) -> np.ndarray:
    order = np.argsort(REWARDS)
    below = np.zeros_like(q_ref)
    below[order] = np.concatenate([[0.0], np.cumsum(q_ref[order])[:-1]])
    c = below + 0.5 * q_ref
    p = q_ref * np.exp(TRANSFORM(c) / BETA)
    return p / p.sum()


def toy_distribution(model, tok) -> np.ndarray:
    """The model's distribution over the 8 completions, renormalized (float64)."""
    batch = pad_pairs([encode_prompt(tok, PROMPT)] * len(WORDS8), [encode_completion(tok, w) for w in WORDS8],
                      tok.pad_token_id)
    with torch.no_grad():
        lp = completion_logps(model, **batch).double()
    return torch.softmax(lp, 0).numpy(), lp.numpy()


def tv(p, q) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def build_datasets(root: Path):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    q_ref, ref_lp = toy_distribution(model, tok)
    rng = np.random.default_rng(DATA_SEED)
    groups = []
    for g in range(NUM_GROUPS_BON):
        idx = rng.choice(len(WORDS8), size=K, p=q_ref)
        u = calibrate(REWARDS[idx])
        groups.append((f"g{g}", idx, u, TRANSFORM(u)))

    listwise = [{"prompt_id": gid, "prompt": PROMPT, "completions": [WORDS8[i] for i in idx],
                 "rewards": REWARDS[idx].tolist(), "calibrated_rewards": u.tolist(), "targets": phi.tolist(),
                 "ref_logps": ref_lp[idx].tolist()} for gid, idx, u, phi in groups[:NUM_GROUPS]]
    pairs = []
    for gid, idx, _, phi in groups[:NUM_GROUPS]:  # a sample of 48 distinct-reward pairs per group (docs/math.md §6: any subset)
        a, b = rng.integers(0, K, size=(2, 4 * 48))
        keep = [(i, j) for i, j in zip(a, b) if idx[i] != idx[j]][:48]
        for i, j in keep:
            i, j = (i, j) if phi[i] > phi[j] else (j, i)
            pairs.append({"prompt_id": gid, "prompt": PROMPT, "chosen": WORDS8[idx[i]], "rejected": WORDS8[idx[j]],
                          "target_margin": float(phi[i] - phi[j]), "soft_label": float(1 / (1 + np.exp(phi[j] - phi[i]))),
                          "weight": 1.0, "ref_chosen_logps": float(ref_lp[idx[i]]),
                          "ref_rejected_logps": float(ref_lp[idx[j]])})
    # bon rows: w = softmax(Φ/β) within each group. The weighted SFT loss is linear in the weights, so rows with
    # the same (prompt, completion) merge exactly into one row with the summed weight (8 rows instead of P·K).
    total = np.zeros(len(WORDS8))
    for _, idx, _, phi in groups:
        w = np.exp(phi / BETA - (phi / BETA).max())
        np.add.at(total, idx, w / w.sum())
    bon = [{"prompt_id": "all", "prompt": PROMPT, "completion": WORDS8[i], "reward": float(REWARDS[i]),
            "calibrated_reward": 0.0, "target": 0.0, "weight": float(total[i] / len(groups)),
            "ref_logp": float(ref_lp[i])} for i in range(len(WORDS8)) if total[i] > 0]
    dirs = {}
    for kind, rows in (("pairs", pairs), ("listwise", listwise), ("bon", bon)):
        dirs[kind] = save_prepared(root / kind, kind, rows, model_dir, BETA, transform=TRANSFORM, num_samples=K)
    return model_dir, dirs, q_ref


def train_and_measure(loss, model_dir, dirs, out):
    from offline_infalign.core.losses import LOSSES
    from offline_infalign.models.modeling import load_adapted
    from offline_infalign.stages.train import train

    lr, steps, batch = SETTINGS[loss]
    cfg = TrainConfig(dataset=str(dirs[LOSSES[loss].kind]), model=str(model_dir), loss=loss, out=str(out),
                      beta=BETA, max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine", lora_r=8,
                      target_modules=LORA_TARGETS,
                      lora_dropout=0.0, per_device_train_batch_size=batch, logging_steps=50, save_steps=None,
                      seed=0)
    t0 = time.time()
    train(cfg)
    seconds = time.time() - t0
    policy, tok = load_adapted(str(model_dir), out)
    p, _ = toy_distribution(policy, tok)
    record = json.loads((Path(out) / "infalign_train.json").read_text())
    return p, seconds, record


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    model_dir, dirs, q_ref = build_datasets(root)
    return model_dir, dirs, q_ref, root


def test_toy_target_is_far_from_the_base(toy):
    _, _, q_ref, _ = toy
    assert tv(q_ref, exact_target(q_ref)) > 0.2


@pytest.mark.parametrize("loss", list(SETTINGS))
def test_converges_to_exact_tilted_policy(toy, loss):
    model_dir, dirs, q_ref, root = toy
    target = exact_target(q_ref)
    p, seconds, record = train_and_measure(loss, model_dir, dirs, root / f"out_{loss}")
    assert record["reference"] == "stored"  # no reference forward: stored columns, float32 weights
    distance = tv(p, target)
    print(f"{loss}: TV(pi_theta, pi*) = {distance:.4f} (start {tv(q_ref, target):.4f}), {seconds:.1f} s")
    assert distance < 0.05, (loss, distance, p.round(3), target.round(3))


if __name__ == "__main__":  # print TVs and times: PYTHONPATH=tests python tests/test_convergence.py [loss ...]
    import os
    import sys
    import tempfile

    DATA_SEED = int(os.environ.get("DATA_SEED", "0"))  # to check that the settings do not depend on one draw

    root = Path(tempfile.mkdtemp())
    model_dir, dirs, q_ref = build_datasets(root)
    target = exact_target(q_ref)
    print("q_ref", q_ref.round(3), "\npi*  ", target.round(3), f"\nTV(q_ref, pi*) = {tv(q_ref, target):.4f}")
    for loss in sys.argv[1:] or SETTINGS:
        p, seconds, _ = train_and_measure(loss, model_dir, dirs, root / f"out_{loss}")
        print(f"{loss:16s} TV = {tv(p, target):.4f}  {seconds:5.1f} s  p = {p.round(3)}")
