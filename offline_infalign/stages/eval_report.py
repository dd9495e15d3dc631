"""The files an evaluation writes once its samples are drawn and judged (stages/evaluate.py): `report.json`, the
samples with their rewards and log-ratios, and the plots.

One policy: `report.json` is that policy's report (report.summarize plus the run's facts), `samples.jsonl` its
samples beside the base samples, the plots beside them. Several: `report.json` holds each policy's report under
`policies`, the paired differences against the baseline under `comparisons` (report.compare, docs/math.md §10)
and the run's facts once; each policy's samples and plots go to `<name>/`, and `comparison.png` shows the
differences.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..artifacts.report import PREDICTION_NOTE, compare, cut_note, length_summary, make_predict_fn, summarize
from ..config import config_to_dict
from ..plots import plot_comparison, plot_tradeoff, plot_win_rate_vs_n

__all__ = ["write_reports", "write_samples", "union"]


def union(lists) -> list:
    """The values of several lists, each once, in the order first seen."""
    out = []
    for values in lists:
        out += [v for v in values if v not in out]
    return out


def write_samples(path: Path, rows, draws, base, policy_rewards, base_rewards) -> None:
    """One line per prompt: both sides' text, ids and finish reasons, the judge's rewards, the log-ratios."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i, r in enumerate(rows):
            row = {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "prompt_ids": draws["prompt_ids"][i]}
            for side, s, rewards in (("policy", draws["policy_samples"][i], policy_rewards),
                                     ("base", base[i], base_rewards)):
                row.update({f"{side}_completions": list(s["completions"]),
                            f"{side}_completion_ids": [list(c) for c in s["completion_ids"]],
                            f"{side}_finish_reasons": list(s["finish_reasons"]),
                            f"{side}_rewards": rewards[i].tolist()})
            for key in ("policy_logps", "ref_logps", "log_ratios", "token_kls"):  # of the policy samples
                row[key] = draws[key][i].tolist()
            fh.write(json.dumps(row) + "\n")


def _policy_report(cfg, p, procedures, ns, base, base_rewards, stop_ids) -> tuple[dict[str, Any], Any]:
    """One policy's report (without the run's facts) and its prediction function."""
    s = p.settings
    transform, beta = s.transform, s.beta
    predict_fn = make_predict_fn(transform, beta, s.loss)
    report = summarize(p.rewards, base_rewards, p.draws["log_ratios"], procedures, ns, predict_fn=predict_fn,
                       num_bootstrap=cfg.num_bootstrap, confidence=cfg.confidence, seed=cfg.seed,
                       token_kls=p.draws["token_kls"])
    lengths = length_summary({"policy": p.draws["policy_samples"], "base": base})
    # Warnings training passed on (e.g. samples drawn tempered: docs/math.md §9) come first: they qualify
    # every number below.
    notes = list(s.warnings)
    notes.append(PREDICTION_NOTE if predict_fn is not None else
                 "no prediction: the adapter has no transform/beta (or was trained with a DPO/IPO baseline loss); "
                 "pass --transform and --beta to compare with a tilt")
    cut = cut_note(lengths["cut_fraction"], cfg.max_new_tokens)
    if cut:
        notes.append(cut)
    if not p.samples_note.startswith("drawn"):
        notes.append(f"policy samples {p.samples_note}")
    report.update({
        "policy": str(p.folder),
        "model": s.model,
        "reward_model": s.reward_model,
        "reward_label": s.reward_label,
        "prompts": s.prompts or f"{s.dataset} [{cfg.split}]",
        "transform": None if transform is None else str(transform),
        "tilt": None if transform is None else transform.tilt,
        "beta": beta,
        "loss": s.loss,
        "trained_for": {"procedure": p.info.get("procedure"), "n": p.info.get("n")},
        **lengths,  # cut_fraction and mean_length, each {"policy", "base"}
        "max_new_tokens": cfg.max_new_tokens,
        "stop_token_ids": stop_ids,
        "confidence": cfg.confidence,
        "num_bootstrap": cfg.num_bootstrap,
        "notes": notes,
        "policy_samples": p.samples_note,
    })
    return report, (transform if predict_fn is not None else None, predict_fn)


def _plots(report: dict[str, Any], folder: Path, transform, predict_fn) -> list[str]:
    return [str(plot_win_rate_vs_n(report, folder / "win_rate_vs_n.png", predict_fn)),
            *(str(path) for path in plot_tradeoff(report, folder, transform))]


def _write(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def write_reports(cfg, out: Path, policies, rows, base, base_rewards, base_samples: dict[str, str], stop_ids,
                  timings, t0: float) -> dict[str, Any]:
    """Write report.json, the samples and the plots; return the report (stages/evaluate.py, `evaluate`).

    base_samples: {"folder": where they are kept, "note": "reused", "drawn (...)" or "redrawn: <why>"}.
    """
    single = len(policies) == 1
    procedures = union(p.settings.procedures for p in policies)
    ns = sorted(set(union(p.settings.ns for p in policies)))
    base_line = f"base samples {base_samples['note']} ({base_samples['folder']})"
    facts = {"package_version": __version__, "config": config_to_dict(cfg), "timings": timings}
    made = {}
    for p in policies:
        folder = out if single else out / p.name
        write_samples(folder / "samples.jsonl", rows, p.draws, base, p.rewards, base_rewards)
        made[p.name] = _policy_report(cfg, p, procedures, ns, base, base_rewards, stop_ids)
    if single:
        report, plotting = made[policies[0].name][0], {policies[0].name: made[policies[0].name][1]}
        report.update({"base_samples": base_samples, **facts})
        if not base_samples["note"].startswith("drawn"):
            report["notes"].append(base_line)
    else:
        baseline = cfg.baseline_name()
        reports = {name: r for name, (r, _) in made.items()}
        plotting = {name: fn for name, (_, fn) in made.items()}
        comparisons = compare({p.name: p.rewards for p in policies}, base_rewards,
                              {n: (r["kl"], r["kl_stderr"]) for n, r in reports.items()}, baseline, procedures, ns,
                              cfg.kl_tolerance, num_bootstrap=cfg.num_bootstrap, confidence=cfg.confidence,
                              seed=cfg.seed)
        first = reports[policies[0].name]
        notes = [base_line, "every policy is judged on the same prompts against the same base samples; a "
                 "difference's interval is a paired bootstrap over prompts (docs/math.md §10)"]
        for name, c in comparisons.items():
            if not c["kl_matched"]:
                notes.append(f"{name} and {baseline} are not at matched KL ({c['kl'][name]:.3f} vs "
                             f"{c['kl'][baseline]:.3f}, tolerance {cfg.kl_tolerance:g}): more KL buys win rate, so "
                             "their difference mixes the transform's effect with the KL's")
        report = {
            "policies": reports,
            "baseline": baseline,
            "comparisons": comparisons,
            **{k: first[k] for k in ("model", "reward_model", "reward_label", "prompts", "num_prompts", "samples",
                                     "max_new_tokens", "stop_token_ids", "confidence", "num_bootstrap")},
            "kl_tolerance": cfg.kl_tolerance,
            "base_samples": base_samples,
            "notes": notes,
            **facts,
        }
    # Written before plotting, so a plotting problem never costs the measurement; rewritten with the plot list.
    _write(out, report)
    if cfg.plots:
        t = time.perf_counter()
        if single:
            report["plots"] = _plots(report, out, *plotting[policies[0].name])
        else:
            report["plots"] = [str(plot_comparison(report, out / "comparison.png"))]
            for name, r in report["policies"].items():
                r["plots"] = _plots(r, out / name, *plotting[name])
                report["plots"] += r["plots"]
        timings["plot_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    _write(out, report)
    return report
