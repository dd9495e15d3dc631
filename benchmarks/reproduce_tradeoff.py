"""The paper's effect end to end on the demo's base model and reward, next to the theory, compared as a paper would.

One sampling run (demo train prompts × K base samples, scored by the demo sentiment reward) feeds every arm:
  dpo       DPO on (best, worst) raw-reward pairs — the usual offline baseline
  identity  calibrated reward, Φ(u) = u
  log       Φ(u) = log u (best-of-N distillation shape)
  exp_bon   the exp tilt `infalign tradeoff --choose` picks for best-of-N at the budget (t > 0)
  exp_won   the same for worst-of-N (t < 0)
Each arm's β is matched to the KL budget by design (docs/math.md §10, core/kl_match.py): β0 where the tilt
restricted to K samples pays the budget (the finite-K model), then at most two secant corrections in log β on
the measured (token-level) KL, stopping within ±0.02 nats; the try nearest the budget is reported, every try is
kept in results.json. DPO's KL does not follow β on deterministic pairs (it overfits them at any β), so DPO keeps
β = 0.1 and its KL is matched by early stopping: the step count is corrected three times (KL ∝ steps², then
bisection).
Every arm is evaluated for best-of-N and worst-of-N at once (the same policy samples serve both), all against one
set of base samples (one samples cache for the whole run), and the chosen arms of a budget are compared in one
`infalign eval` of several policies with identity as the baseline: each arm's paired difference from identity
(docs/math.md §10), for N and for the standard win rate, beside both KLs.

Also reported: the finite-K ceiling — the win rate of the exact tilt restricted to the K base samples of a
prompt, at the measured KL (what an offline learner that fits its data perfectly, but does not generalize past
it, gets) —
and a loss comparison (tilted_pairwise, tilted_sigmoid, listwise, weighted_sft) for exp_bon at the largest
budget, at the tradeoff tool's β, with the training time of each.

Usage (not part of CI; about 30-60 minutes on a 2-core CPU):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reproduce_tradeoff.py --out runs/reproduce
Finished trainings and evaluations are reused on a rerun with the same --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=24)
    p.add_argument("--loss", default="listwise")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--learning-rate", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=2, help="listwise prompts per step; pairs and bon batches hold as many sequences")
    p.add_argument("--arms", nargs="+", default=["dpo", "identity", "log", "exp_bon", "exp_won"])
    p.add_argument("--match-iters", type=int, default=2, help="at most this many β corrections after the first "
                   "training (stopping within 0.02 nats of the budget)")
    p.add_argument("--dpo-extra-iters", type=int, default=2, help="more step-count corrections for DPO")
    p.add_argument("--dpo-beta", type=float, default=0.1, help="DPO's β (its KL is matched by the step count)")
    p.add_argument("--dpo-steps", type=int, default=16, help="DPO's first step count")
    p.add_argument("--no-loss-comparison", action="store_true")
    return p.parse_args()


def main() -> int:
    import torch

    torch.set_num_threads(1)
    from offline_infalign.config import (
        EvalConfig,
        PrepareConfig,
        SampleConfig,
        ScoreConfig,
        TrainConfig,
        load_config,
    )
    from offline_infalign.core import tradeoff
    from offline_infalign.core.errors import InfalignError
    from offline_infalign.core.finite_k import finite_k_at_kl
    from offline_infalign.core.kl_match import Try, nearest, next_beta
    from offline_infalign.core.losses import get_loss
    from offline_infalign.core.transforms import Transform
    from offline_infalign.demo.assets import demo_model_dir
    from offline_infalign.stages import train as trainer
    from offline_infalign.stages.evaluate import evaluate
    from offline_infalign.stages.prepare import run_prepare
    from offline_infalign.stages.sample import run_sample
    from offline_infalign.stages.score import run_score

    a = _args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = str(demo_model_dir())
    data = out / "data"
    run_sample(load_config(SampleConfig, None, dict(
        prompts="demo", model=model, out=str(data / "samples"), num_samples=a.num_samples,
        max_new_tokens=a.max_new_tokens, seed=0, limit=a.num_prompts, batch_size=16)))
    run_score(load_config(ScoreConfig, None, dict(input=str(data / "samples"), reward_model="demo",
                                                           out=str(data / "scored"))))
    t_data = time.perf_counter() - t_start

    def prepared(name: str, kind: str, transform: Transform, beta: float, best_worst: bool = False) -> Path:
        # DPO baseline (docs/math.md §6): prepare's best_worst pairs, one (highest, lowest) raw-reward pair per prompt.
        path = data / (f"prepared_{name}_{kind}_{beta:.5f}" + ("_best_worst" if best_worst else ""))
        run_prepare(load_config(PrepareConfig, None, dict(
            input=str(data / "scored"), out=str(path), kind=kind, transform=transform.name, tilt=transform.tilt,
            beta=beta, test_fraction=0.0, pairs="best_worst" if best_worst else "all")))
        return path

    def run(name: str, loss: str, transform: Transform, beta: float, best_worst=False, steps: int | None = None
            ) -> dict:
        kind = get_loss(loss).kind
        steps = steps or a.steps
        tag = f"{name}_{loss}_{beta:.5f}" + ("" if steps == a.steps else f"_s{steps}")
        adapter, ev = out / "adapters" / tag, out / "evals" / tag
        cache = out / "evals" / "_samples"  # every evaluation's base samples are one draw
        t0 = time.perf_counter()
        if not (adapter / "infalign_train.json").is_file():
            trainer.train(load_config(TrainConfig, None, dict(
                dataset=str(prepared(name, kind, transform, beta, best_worst)), model=model, loss=loss,
                beta=beta, out=str(adapter), max_steps=steps, learning_rate=a.learning_rate,
                # The same sequences per step for every kind (compute-matched): a listwise row holds K
                # completions, a pair 2, a bon row 1.
                per_device_train_batch_size=a.batch_size * {"listwise": 1, "pairs": a.num_samples // 2,
                                                            "bon": a.num_samples}[kind],
                num_train_epochs=1000.0, logging_steps=50, save_steps=None)))
        train_s = json.loads((adapter / "infalign_train.json").read_text())["final_metrics"].get("train_runtime")
        if not (ev / "report.json").is_file():
            evaluate(load_config(EvalConfig, None, dict(
                policy=str(adapter), model=model, reward_model="demo", prompts="demo", split="test",
                limit=a.eval_prompts, procedure=["bon", "won"], n=[1, a.n], samples=a.eval_samples,
                max_new_tokens=a.max_new_tokens, seed=0, out=str(ev), plots=False, samples_cache=str(cache))))
        rep = json.loads((ev / "report.json").read_text())
        return {"name": name, "loss": loss, "transform": str(transform), "beta": beta, "steps": steps,
                "kl": rep["kl"], "kl_stderr": rep["kl_stderr"], "standard": rep["standard_win_rate"],
                "results": rep["results"], "train_s": train_s, "wall_s": time.perf_counter() - t0,
                "adapter": str(adapter)}

    def compare(budget: float, arms: dict) -> dict:
        """One evaluation of the budget's chosen arms, identity the baseline: the paired differences (§10)."""
        ev = out / f"compare_{budget}"
        if not (ev / "report.json").is_file():
            evaluate(load_config(EvalConfig, None, dict(
                policy=[f"{name}={r['adapter']}" for name, r in arms.items()], baseline="identity", model=model,
                reward_model="demo", prompts="demo", split="test", limit=a.eval_prompts, procedure=["bon", "won"],
                n=[1, a.n], samples=a.eval_samples, max_new_tokens=a.max_new_tokens, seed=0, out=str(ev),
                plots=False, samples_cache=str(out / "evals" / "_samples"))))
        return json.loads((ev / "report.json").read_text())["comparisons"]

    def transform_of(name: str, budget: float) -> Transform:
        if name in ("identity", "log"):
            return Transform(name)
        if name == "dpo":
            return Transform("identity")  # only used to build the pair set
        return tradeoff.choose(name.split("_")[1], a.n, budget).transform

    results: dict = {"budgets": {}, "setup": vars(a), "data_s": t_data}
    for budget in a.budgets:
        per_arm = {}
        for name in a.arms:
            transform = transform_of(name, budget)
            if name == "dpo":
                # DPO on deterministic (best, worst) pairs drives margins to infinity whatever β is (measured
                # here: KL 25–240 nats after 250 steps for β from 0.1 to 18, non-monotone in β), so its KL is
                # matched by early stopping at β = dpo_beta: the number of steps is bisected instead.
                tries = [run(name, "dpo", transform, a.dpo_beta, best_worst=True, steps=a.dpo_steps)]
                for _ in range(a.match_iters + a.dpo_extra_iters):
                    tries.append(run(name, "dpo", transform, a.dpo_beta, best_worst=True,
                                     steps=_next_steps(tries, budget)))
            else:
                tries = []
                while (beta := next_beta(transform, budget, a.num_samples, [Try(t["beta"], t["kl"]) for t in tries],
                                         max_corrections=a.match_iters)) is not None:
                    tries.append(run(name, a.loss, transform, beta))
            chosen = nearest([Try(t["beta"], t["kl"]) for t in tries], budget)
            best = next(t for t in tries if (t["beta"], t["kl"]) == (chosen.beta, chosen.kl))
            for proc in ("bon", "won"):
                if name != "dpo":
                    # The theory's value for this transform at the KL the trained policy actually paid: the
                    # point on its predicted curve straight above/below the measured one (docs/math.md §4).
                    best.setdefault("predicted", {})[proc] = _theory_at_kl(transform, best["kl"], proc, a.n)
                    fk = finite_k_at_kl(transform, best["kl"], a.num_samples, proc, a.n)
                    best.setdefault("finite_k", {})[proc] = None if fk is None else fk.win_rate
                try:  # the optimum at the measured KL (None where no β reaches it, e.g. an overfit DPO policy)
                    opt = tradeoff.optimal(proc, a.n, max(best["kl"], 1e-3)).win_rate
                except InfalignError:
                    opt = None
                best.setdefault("optimal", {})[proc] = opt
            best["tries"] = [{"beta": t["beta"], "steps": t["steps"], "kl": t["kl"]} for t in tries]
            per_arm[name] = best
            print(f"[{time.perf_counter() - t_start:7.0f}s] KL {budget}: {name:9s} beta={best['beta']:.4f} "
                  f"KL={best['kl']:.3f} bon{a.n}={best['results']['bon'][str(a.n)]['win_rate']:.3f} "
                  f"won{a.n}={best['results']['won'][str(a.n)]['win_rate']:.3f}", flush=True)
        if "identity" in per_arm:
            for name, c in compare(budget, per_arm).items():
                per_arm[name]["vs_identity"] = c
        results["budgets"][str(budget)] = per_arm
        (out / "results.json").write_text(json.dumps(results, indent=1))

    if not a.no_loss_comparison:
        budget = max(a.budgets)
        transform = transform_of("exp_bon", budget)
        beta = tradeoff.beta_for_kl(transform, budget)
        results["losses"] = {}
        for loss in ("tilted_pairwise", "tilted_sigmoid", "listwise", "weighted_sft"):
            results["losses"][loss] = run("exp_bon", loss, transform, beta)
            results["losses"][loss]["predicted"] = {
                "bon": _theory_at_kl(transform, results["losses"][loss]["kl"], "bon", a.n)}
            print(f"[{time.perf_counter() - t_start:7.0f}s] loss {loss}: KL={results['losses'][loss]['kl']:.3f}",
                  flush=True)
        results["losses_prediction"] = {"beta": beta, "kl": budget,
                                        "bon": tradeoff.predict(transform, beta, "bon", a.n).win_rate}
    results["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, out, a.n)
    return 0


def _next_beta(tries: list[dict], budget: float) -> float:
    """Next β toward the KL budget from measurements alone (benchmarks/real/effect.py matches its arms with it;
    this script uses core.kl_match, which starts from the finite-K model). Once two tries bracket the budget: the geometric midpoint of the nearest
    bracketing pair (bisection on log β). Before that: a step on log KL = a − s·log β with s = 2 (small-tilt
    regime) after one try, the secant slope of the last two after that, clamped to [0.5, 4], and the step in β
    limited to a factor of 30 (measured KLs are noisy, and DPO's KL responds weakly to β)."""
    above = [t for t in tries if t["kl"] > budget]  # β too small
    below = [t for t in tries if t["kl"] <= budget]  # β too large
    if above and below:
        lo = max(above, key=lambda t: t["beta"])["beta"]
        hi = min(below, key=lambda t: t["beta"])["beta"]
        return float(np.sqrt(lo * hi))
    last, slope = tries[-1], 2.0
    if len(tries) >= 2:
        prev = tries[-2]
        d_beta = np.log(last["beta"] / prev["beta"])
        if abs(d_beta) > 1e-9:
            slope = float(np.clip(-np.log(max(last["kl"], 1e-3) / max(prev["kl"], 1e-3)) / d_beta, 0.5, 4.0))
    step = float(np.clip(np.log(max(last["kl"], 1e-3) / budget) / slope, -np.log(30.0), np.log(30.0)))
    return float(last["beta"] * np.exp(step))


def _theory_at_kl(transform, kl: float, procedure: str, n: int) -> float | None:
    """Win rate of the exact tilt of `transform` whose KL equals `kl` (None where no β reaches it)."""
    from offline_infalign.core import tradeoff
    from offline_infalign.core.errors import InfalignError

    try:
        return tradeoff.predict(transform, tradeoff.beta_for_kl(transform, max(kl, 1e-4)), procedure, n).win_rate
    except InfalignError:
        return None


def _next_steps(tries: list[dict], budget: float) -> int:
    """Next step count toward the KL budget: bisection once bracketed, else KL ∝ steps² (drift linear in steps)."""
    above = [t["steps"] for t in tries if t["kl"] > budget]
    below = [t["steps"] for t in tries if t["kl"] <= budget]
    if above and below:
        return max(1, int(round(np.sqrt(min(above) * max(below)))))
    last = tries[-1]
    factor = float(np.clip(np.sqrt(budget / max(last["kl"], 1e-3)), 1 / 8, 8))
    return max(1, int(round(last["steps"] * factor)))


def _diff(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def report(results: dict, out: Path, n: int) -> None:
    """Markdown tables (printed and written to out/results.md) and one plot per procedure."""
    from offline_infalign.core.tradeoff import tradeoff_curves
    from offline_infalign.core.transforms import Transform, parse_transform
    from offline_infalign.plots import plot_tradeoff_curves

    lines = []
    for proc in ("bon", "won"):
        label = f"{'best' if proc == 'bon' else 'worst'}-of-{n}"
        lines += [f"\n### {label}\n", f"| budget | arm | β | KL (± se) | {label} win rate [95% CI] | − identity, "
                  "paired [95% CI] | standard win rate | − identity, paired | theory at measured KL | finite-K "
                  "ceiling at measured KL | optimum at measured KL |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        points = []
        for budget, arms in results["budgets"].items():
            for name, r in arms.items():
                e = r["results"][proc][str(n)]
                pred = r.get("predicted", {}).get(proc)
                fk = r.get("finite_k", {}).get(proc)
                vs = r.get("vs_identity")
                diff = "" if vs is None else _diff(vs["results"][proc][str(n)]) + (
                    "" if vs["kl_matched"] else " (KL not matched)")
                std_diff = "" if vs is None else _diff(vs["standard"])
                lines.append(
                    f"| {budget} | {name} | {r['beta']:.4f} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | "
                    f"{e['win_rate']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}] | {diff} | "
                    f"{r['standard']['win_rate']:.3f} | {std_diff} | "
                    f"{'' if pred is None else f'{pred:.3f}'} | {'' if fk is None else f'{fk:.3f}'} | "
                    f"{'' if r['optimal'][proc] is None else format(r['optimal'][proc], '.3f')} |")
                # Color = the arm's curve (identity C0, log C1, exp C2; other arms C3/C4), marker = the budget.
                color = {"identity": "C0", "log": "C1", f"exp_{proc}": "C2"}.get(name, "C3" if name == "dpo" else "C4")
                marker = "os^v"[list(results["budgets"]).index(budget) % 4]
                points.append((r["kl"], e["win_rate"], f"{name} @ {budget}", (e["ci_low"], e["ci_high"]),
                               {"color": color, "marker": marker}))
        kl_max = 1.3 * max(max(r["kl"] for r in arms.values()) for arms in results["budgets"].values())
        some = next(iter(results["budgets"].values()))
        exp_t = parse_transform(some[f"exp_{proc}"]["transform"]) if f"exp_{proc}" in some else None
        transforms = [("identity", Transform("identity")), ("log", Transform("log"))]
        transforms += [(str(exp_t), exp_t)] if exp_t is not None else []
        curves = tradeoff_curves(proc, n, transforms, kl_max=max(kl_max, 0.05), num_points=16)
        plot_tradeoff_curves(curves, out / f"reproduce_{proc}{n}.png", points=points,
                             title=f"demo model: measured {label} win rate vs predicted curves",
                             ylabel=f"{label} win rate vs base")
    if "losses" in results:
        pr = results["losses_prediction"]
        lines += [f"\n### Offline losses (exp_bon, β = {pr['beta']:.4f}, predicted KL {pr['kl']}, predicted "
                  f"best-of-{n} {pr['bon']:.3f})\n",
                  f"| loss | KL (± se) | best-of-{n} win rate [95% CI] | theory at measured KL | standard win rate | "
                  "train time (s) |",
                  "|---|---|---|---|---|---|"]
        for loss, r in results["losses"].items():
            e = r["results"]["bon"][str(n)]
            th = r.get("predicted", {}).get("bon")
            lines.append(f"| {loss} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | {e['win_rate']:.3f} "
                         f"[{e['ci_low']:.3f}, {e['ci_high']:.3f}] | {'' if th is None else f'{th:.3f}'} | "
                         f"{r['standard']['win_rate']:.3f} | "
                         f"{r['train_s']:.0f} |")
    lines.append(f"\nTotal time {results.get('total_s', 0) / 60:.1f} min (data {results['data_s']:.0f} s).")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
