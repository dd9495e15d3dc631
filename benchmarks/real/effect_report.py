"""The effect benchmark's outputs: the issue's goals checked, the table (results.md) and the plot (effect.png).

Split from effect.py, which runs the arms; this module only reads the results dict that effect.py writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

JUDGE = "benchmarks.real.rewards:tfidf_judge"  # the held-out judge (effect.py scores with it)
# The table's blocks: the arms shown under each served procedure.
SERVED = {"bon": ["dpo", "identity", "log", "exp_bon"], "won": ["identity", "exp_won"]}


def _diff(results: dict, budget: str, scorer: str, name: str, proc: str, n: int) -> dict | None:
    """name − identity at `budget` by `scorer` (reward or judge): {difference, ci_low, ci_high}, or None."""
    c = results.get("comparisons", {}).get(budget, {}).get(scorer, {}).get(name)
    return None if c is None else c["results"][proc][str(n)]


def goals(results: dict, n: int) -> list[dict]:
    """The goals, checked on each budget: exp − identity ≥ 3 points of best-of-N at matched KL with the interval
    excluding 0 (and the judge agreeing in sign); the worst-of-N tilt beats identity; the standard win rate of the
    best-of-N tilt is lower than identity's; each arm within 3 points of its finite-K ceiling."""
    out = []
    for budget, arms in results["budgets"].items():
        for proc, exp_name, need in (("bon", "exp_bon", 0.03), ("won", "exp_won", 0.0)):
            d = _diff(results, budget, "reward", exp_name, proc, n)
            if d is not None:
                c = results["comparisons"][budget]["reward"][exp_name]
                out.append({"budget": budget, "goal": f"{exp_name} − identity ({proc}{n}) ≥ {need:.2f}, CI > 0",
                            "value": d["difference"], "ci": [d["ci_low"], d["ci_high"]],
                            "met": bool(d["difference"] >= need and d["ci_low"] > 0 and c["kl_matched"]),
                            "kl": [arms[exp_name]["kl"], arms["identity"]["kl"]], "kl_matched": c["kl_matched"]})
        c = results.get("comparisons", {}).get(budget, {}).get("reward", {}).get("exp_bon")
        if c is not None:
            s = c["standard"]
            out.append({"budget": budget, "goal": "exp_bon − identity standard win rate < 0 (the tilt trades it)",
                        "value": s["difference"], "ci": [s["ci_low"], s["ci_high"]], "met": bool(s["difference"] < 0)})
        for proc, names in SERVED.items():
            for name in names:
                fk = arms.get(name, {}).get("finite_k", {}).get(proc)
                if fk is not None:
                    win = arms[name]["results"][proc][str(n)]["win_rate"]
                    out.append({"budget": budget, "goal": f"{name} ({proc}{n}) within 0.03 of its finite-K ceiling",
                                "value": win - fk, "met": bool(abs(win - fk) <= 0.03)})
    return out


def _fmt_ci(e: dict) -> str:
    return f"{e['win_rate']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def _num(x) -> str:
    return "" if x is None else f"{x:.3f}"


def report(results: dict, out: Path) -> str:
    """The table (printed and written to out/results.md), the median samples before/after, and out/effect.png."""
    from offline_infalign.demo.run import showcase

    n, lines = results["setup"]["n"], []
    lines += ["| served | arm | transform | β | steps | KL (± se) | win rate [95% CI] | theory at KL | finite-K "
              "ceiling | standard win | judge win rate [95% CI] | judge standard win |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for budget, arms in results["budgets"].items():
        for proc, names in SERVED.items():
            label = f"{'best' if proc == 'bon' else 'worst'}-of-{n} @ KL {budget}"
            for name in (x for x in names if x in arms):
                r = arms[name]
                lines.append(
                    f"| {label} | {name} | {r['transform'] if name != 'dpo' else 'dpo (best, worst)'} | "
                    f"{r['beta']:.4f} | {r['steps']} | {r['kl']:.3f} ± {r['kl_stderr']:.3f} | "
                    f"{_fmt_ci(r['results'][proc][str(n)])} | {_num(r.get('predicted', {}).get(proc))} | "
                    f"{_num(r.get('finite_k', {}).get(proc))} | {r['standard']['win_rate']:.3f} | "
                    f"{_fmt_ci(r['judge'][proc][str(n)])} | {r['judge'][proc]['1']['win_rate']:.3f} |")
            for name in (x for x in names if x != "identity" and x in arms):
                d, j = (_diff(results, budget, scorer, name, proc, n) for scorer in ("reward", "judge"))
                if d is None:
                    continue
                c = results["comparisons"][budget]["reward"][name]
                matched = "matched" if c["kl_matched"] else f"NOT matched (> {c['kl_tolerance']:.2f})"
                s_d, s_j = c["standard"], results["comparisons"][budget]["judge"][name]["standard"]
                lines.append(f"| {label} | **{name} − identity** | | | | {c['kl_difference']:+.3f} ({matched}) | "
                             f"**{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]** | | | "
                             f"{s_d['difference']:+.3f} [{s_d['ci_low']:+.3f}, {s_d['ci_high']:+.3f}] | "
                             f"**{j['difference']:+.3f} [{j['ci_low']:+.3f}, {j['ci_high']:+.3f}]** | "
                             f"{s_j['difference']:+.3f} |")
    some = next(iter(next(iter(results["budgets"].values())).values()))
    lines.append(f"\nwin rates against the base model on {results['setup']['eval_prompts']} held-out prompts × "
                 f"{results['setup']['eval_samples']} samples per side (one set of base samples for every arm), 95% "
                 f"bootstrap intervals over prompts; differences paired by prompt, their KL column the KL "
                 f"difference. Judge: {JUDGE.split(':')[1]}; Spearman correlation of training "
                 f"reward and judge on the base samples: {some['judge']['spearman_base']:.2f}.")
    lines.append("\n**Goals** (met only counts at a real model's size):\n")
    for g in results["goals"]:
        ci = f" [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]" if "ci" in g else ""
        lines.append(f"- KL {g['budget']}: {g['goal']}: {g['value']:+.3f}{ci} — {'met' if g['met'] else 'MISSED'}")
    lines.append("\nSamples before (base) and after, the median-reward one of each side, training reward in brackets:")
    for budget, arms in results["budgets"].items():
        for exp_name in ("exp_bon", "exp_won"):
            if exp_name not in arms:
                continue
            lines.append(f"\n{exp_name} @ KL {budget}:")
            for ex in showcase(Path(arms[exp_name]["samples"])):
                lines.append(f"  prompt: {ex['prompt']!r}")
                for side in ("base", "policy"):
                    text = ex[side]["completion"].replace("\n", " ")
                    lines.append(f"    {side:6s} [{ex[side]['reward']:+.2f}] {text[:110]}{'…' if len(text) > 110 else ''}")
    lines += _power_lines(results, n) + _tries(results)
    t = results["timings"]
    lines.append(f"\nTotal {t['total_s'] / 60:.1f} min ({results['device']}; backend {t.get('backend')}; sampling "
                 f"{t.get('sample_s', 0):.0f} s, scoring {t.get('score_s', 0):.0f} s; model conversion "
                 f"{t.get('model_s', 0):.0f} s, not counted).")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    results["plot"] = str(_plot(results, out))
    return text


def power(results: dict, n: int) -> list[dict]:
    """What the comparison could resolve: per tilted arm, the spread of its per-prompt differences from identity,
    the interval's half-width it gives (1.96 sd / √P), the gap the finite-K ceilings predict at the arms' KLs, and
    the prompts a half-width of that gap would need ((1.96 sd / gap)², same samples per prompt)."""
    out = []
    for budget, arms in results["budgets"].items():
        for proc, name in (("bon", "exp_bon"), ("won", "exp_won")):
            if name not in arms or "identity" not in arms:
                continue
            d = np.subtract(arms[name]["per_prompt"][proc], arms["identity"]["per_prompt"][proc])
            sd = float(np.std(d, ddof=1))
            fk = [arms[x].get("finite_k", {}).get(proc) for x in (name, "identity")]
            gap = None if None in fk else fk[0] - fk[1]
            out.append({"budget": budget, "arm": name, "procedure": proc, "prompts": len(d), "sd": sd,
                        "half_width": 1.96 * sd / np.sqrt(len(d)), "finite_k_gap": gap,
                        "prompts_needed": None if not gap or gap <= 0 else int(np.ceil((1.96 * sd / gap) ** 2))})
    return out


def _power_lines(results: dict, n: int) -> list[str]:
    lines = []
    for p in power(results, n):
        gap = "" if p["finite_k_gap"] is None else (
            f"; the finite-K ceilings at the two KLs differ by {p['finite_k_gap']:+.3f}"
            + (f", which a half-width that small would need ≈ {p['prompts_needed']} prompts to resolve"
               if p["prompts_needed"] else ""))
        lines.append(f"- KL {p['budget']}, {p['arm']} − identity ({p['procedure']}{n}): per-prompt differences "
                     f"sd {p['sd']:.3f} over {p['prompts']} prompts → interval half-width ±{p['half_width']:.3f}"
                     f"{gap}.")
    return ["\nWhat the comparison can resolve:"] + lines if lines else []


def _tries(results: dict) -> list[str]:
    """Every try of the KL matching: β, steps, measured KL, time."""
    lines = ["\nKL matching (every try; the reported one is nearest its target):"]
    for budget, arms in results["budgets"].items():
        for name, r in arms.items():
            tries = ", ".join(f"β {t['beta']:.4f}/{t['steps']} steps → {t['kl']:.3f}" for t in r["tries"])
            lines.append(f"- KL {budget}, {name} (target {r.get('target_kl', float(budget)):.3f}): {tries}")
    return lines


def _plot(results: dict, out: Path) -> Path:
    """Two panels (best-of-N, worst-of-N) from plots.plot_tradeoff_curves, side by side in one PNG."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    from offline_infalign.core.tradeoff import tradeoff_curves
    from offline_infalign.core.transforms import parse_transform
    from offline_infalign.plots import plot_tradeoff_curves

    n, panels = results["setup"]["n"], []
    with tempfile.TemporaryDirectory() as tmp:
        for proc, names in SERVED.items():
            label = f"{'best' if proc == 'bon' else 'worst'}-of-{n}"
            budgets = results["budgets"]
            first = next(iter(budgets.values()))
            curve_arms = [x for x in names if x != "dpo" and x in first]
            colors = {x: f"C{i}" for i, x in enumerate(curve_arms)} | {"dpo": "C7"}
            curves = tradeoff_curves(proc, n, [(first[x]["transform"], parse_transform(first[x]["transform"]))
                                               for x in curve_arms],
                                     kl_max=max(0.05, 1.3 * max(r["kl"] for arms in budgets.values()
                                                                for r in arms.values())), num_points=16)
            points, dx = [], 0.01 * curves[0].kl.max()  # the judge's point a little to the right
            for i, (budget, arms) in enumerate(budgets.items()):
                for name in (x for x in names if x in arms):
                    r, style = arms[name], {"color": colors[name], "marker": "os^v"[i % 4]}
                    e, j = r["results"][proc][str(n)], r["judge"][proc][str(n)]
                    points.append((r["kl"], e["win_rate"], f"{name} @ {budget}", (e["ci_low"], e["ci_high"]), style))
                    points.append((r["kl"] + dx, j["win_rate"], f"{name} @ {budget}, judge", (j["ci_low"], j["ci_high"]),
                                   {**style, "mfc": "none"}))
            panels.append(plot_tradeoff_curves(curves, Path(tmp) / f"{proc}.png", points=points,
                                               title=f"{results['model_name']}: {label} win rate vs base",
                                               ylabel=f"{label} win rate vs base (hollow: judge)"))
        images = [mpimg.imread(p) for p in panels]
        height = min(im.shape[0] for im in images)
        path = out / "effect.png"
        mpimg.imsave(path, np.concatenate([im[:height] for im in images], axis=1))
    return path
