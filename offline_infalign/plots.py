"""Every plot of the package: the tradeoff tool's, the evaluation's and the demo's. matplotlib (Agg) is imported
lazily, so importing this module costs nothing for a run with --no-plots.

- `plot_tradeoff_curves`: win rate against KL, curves plus measured points (the primitive the others use).
- `plot_win_rate_vs_n`, `plot_tradeoff`: an evaluation report's measurements against its predictions.
- `plot_comparison`: several evaluated policies on their predicted curves, beside their paired differences from
  the baseline (docs/math.md §10).
- `plot_demo`: the demo's two policies on their predicted curves, beside the paired difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import InfalignError
from .core.procedures import PROCEDURES, get_procedure
from .core.tradeoff import tradeoff_curves
from .core.transforms import parse_transform

__all__ = ["check_plot_path", "plot_tradeoff_curves", "plot_win_rate_vs_n", "plot_tradeoff", "plot_comparison",
           "plot_demo"]

_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path) -> Path:
    """`path` as a Path when matplotlib can write a plot there, checked before anything is computed: its extension
    names a format matplotlib writes (png, pdf, svg, ...; it picks the format from the extension), it is not a
    folder, and no file stands where a folder above it would be created. Else one InfalignError naming it."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        got = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise InfalignError(f"plot file {str(path)!r} has {got}; the format is taken from the extension, one of: "
                            f"{', '.join(formats)}")
    if path.is_dir():
        raise InfalignError(f"plot file {str(path)!r} is a folder; give a file name such as {str(path / 'plot.png')!r}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InfalignError(f"plot file {str(path)!r} cannot be written: {str(blocking)!r} is a file, not a folder")
    return path


def _label(procedure: str, n: int) -> str:
    """'best-of-4' for ("bon", 4): the procedure registry's label with N filled in."""
    return get_procedure(procedure).label.replace("N", str(n))


def plot_tradeoff_curves(curves: Sequence, path, points: Iterable | None = None, title: str | None = None,
                         ylabel: str = "win rate vs base") -> Path:
    """Draw win rate against KL for each curve and overlay measured points; write a PNG to `path`.

    Args:
        curves: objects with `label`, `kl` (C,) and `win_rate` (C,), e.g. core.tradeoff.Curve from
            `tradeoff_curves`; a curve labelled "optimal" is drawn black and dashed (the yardstick).
        points: (kl, win_rate, label, ci) tuples, optionally with a fifth element, a dict of matplotlib style
            (e.g. {"color": "C0", "marker": "s"}: the color of the curve the point belongs to); ci is None or
            (low, high) of the win rate, drawn as an error bar (e.g. a measured policy from `estimate_win_rate`).
    Returns the path written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _draw_curves(ax, curves, points, title, ylabel)
    return _save(fig, path)


def _draw_curves(ax, curves: Sequence, points: Iterable | None, title: str | None, ylabel: str) -> None:
    for curve in curves:
        style = {"color": "k", "ls": "--"} if curve.label == "optimal" else {}
        ax.plot(curve.kl, curve.win_rate, lw=1.6, label=curve.label, **style)
    for kl, win, label, ci, *style in points or ():
        yerr = None if ci is None else [[win - ci[0]], [ci[1] - win]]
        kw = {"fmt": "o", "ms": 6, "capsize": 3, **(style[0] if style else {})}
        if "marker" in kw:  # errorbar takes the marker through fmt
            kw["fmt"] = kw.pop("marker")
        ax.errorbar([kl], [win], yerr=yerr, label=label, **kw)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_xlim(left=0)
    ax.set_xlabel("KL(policy || base), nats")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _draw_differences(ax, items: Sequence[tuple[str, float, float, float]], title: str) -> None:
    """Paired differences as points with their intervals, one row each, and the line of no difference."""
    ys = np.arange(len(items))[::-1]
    for y, (_, diff, lo, hi) in zip(ys, items):
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "0.4"
        ax.errorbar([diff], [y], xerr=[[diff - lo], [hi - diff]], fmt="s", color=color, capsize=4, ms=6)
        ax.annotate(f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]", (diff, y), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
    ax.axvline(0.0, color="k", lw=0.9)
    # Room for the labels above the points on both sides of 0.
    lo = min([0.0] + [item[2] for item in items])
    hi = max([0.0] + [item[3] for item in items])
    pad = 0.35 * max(hi - lo, 1e-3)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_yticks(ys)
    ax.set_yticklabels([label for label, *_ in items], fontsize=8)
    ax.set_ylim(-0.7, len(items) - 0.3)
    ax.set_xlabel("difference of win rates (paired by prompt)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _save(fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_win_rate_vs_n(report: dict[str, Any], path, predict_fn: Callable[[str, int], Any] | None = None) -> Path:
    """Measured win rate vs N with its interval as error bars, the predicted curve as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (procedure, by_n) in enumerate(report["results"].items()):
        color = _COLORS[k % len(_COLORS)]
        ns = sorted(int(n) for n in by_n)
        wr = np.array([by_n[str(n)]["win_rate"] for n in ns])
        lo = np.array([by_n[str(n)]["ci_low"] for n in ns])
        hi = np.array([by_n[str(n)]["ci_high"] for n in ns])
        ax.errorbar(ns, wr, yerr=[wr - lo, hi - wr], fmt="o", color=color, capsize=3,
                    label=f"{procedure}: measured ({report.get('confidence', 0.95):.0%} CI)")
        if predict_fn is not None:
            grid = np.arange(1, max(ns) + 1)
            ax.plot(grid, [predict_fn(procedure, int(n)).win_rate for n in grid], "-", color=color,
                    label=f"{procedure}: predicted")
    ax.axhline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"N ({' / '.join(p.label for p in PROCEDURES.values())})")
    ax.set_ylabel("win rate vs base")
    ax.set_title(f"{report.get('transform') or 'policy'}, beta={report.get('beta')}, KL={report['kl']:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(report: dict[str, Any], out_dir, transform=None) -> list[Path]:
    """Measured (KL, win rate) on the predicted win-rate-vs-KL curves (docs/math.md §4/§8), one PNG per procedure and N.

    Curves: the adapter's transform swept over β (when it has one) and the optimum, the yardstick. Points: the
    measurement with its interval, and the prediction for the adapter's exact β. Files `tradeoff_<proc>_n<N>.png`.
    """
    kl, pred_kl = report["kl"], report.get("predicted_kl")
    reach = max(kl + 2 * (report["kl_stderr"] if np.isfinite(report["kl_stderr"]) else 0.0), pred_kl or 0.0)
    kl_max = max(1.5 * reach, 0.05)  # the curves extend past both points
    paths = []
    for procedure, by_n in report["results"].items():
        for n_text, e in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            n = int(n_text)
            curves = tradeoff_curves(procedure, n, [] if transform is None else [(str(transform), transform)],
                                     kl_max=kl_max, num_points=25)
            points = [(kl, e["win_rate"], f"measured ({report.get('confidence', 0.95):.0%} CI)",
                       (e["ci_low"], e["ci_high"]))]
            if e.get("predicted") is not None and pred_kl is not None:
                points.append((pred_kl, e["predicted"], f"predicted, beta={report.get('beta'):g}", None))
            paths.append(plot_tradeoff_curves(
                curves, Path(out_dir) / f"tradeoff_{procedure}_n{n}.png", points=points,
                title=f"{_label(procedure, n)}: {report.get('transform') or 'policy'}",
                ylabel=f"{procedure} win rate vs base (N={n})"))
    return paths


def _served(report: dict[str, Any]) -> tuple[str, int]:
    """The (procedure, N) a comparison plot shows: the first procedure measured, at the baseline's trained N when
    it was measured, else the largest N."""
    baseline = report["policies"][report["baseline"]]
    procedure = next(iter(baseline["results"]))
    ns = sorted(int(n) for n in baseline["results"][procedure])
    trained = (baseline.get("trained_for") or {}).get("n")
    return procedure, int(trained) if trained in ns else ns[-1]


def plot_comparison(report: dict[str, Any], path) -> Path:
    """An evaluation of several policies (stages/eval_report.py): left, each policy's measured win rate and KL on
    its transform's predicted curve (and the optimum's); right, each policy's paired difference from the baseline
    under that procedure and N and under N = 1 (docs/math.md §10)."""
    procedure, n = _served(report)
    policies, baseline = report["policies"], report["baseline"]
    kl_max = max([0.05] + [1.3 * r["kl"] for r in policies.values()])
    named = [(name, r["transform"]) for name, r in policies.items() if r.get("transform") and r.get("beta")]
    curves = tradeoff_curves(procedure, n, [(f"{name}: {t}", parse_transform(t)) for name, t in named],
                             kl_max=kl_max, num_points=16)
    color = {name: f"C{i}" for i, (name, _) in enumerate(named)}
    points = [(max(r["kl"], 0.0), r["results"][procedure][str(n)]["win_rate"], f"measured {name}",
               (r["results"][procedure][str(n)]["ci_low"], r["results"][procedure][str(n)]["ci_high"]),
               {"color": color.get(name, "0.3"), "marker": "s"}) for name, r in policies.items()]
    label = _label(procedure, n)
    items = []
    for name, c in report["comparisons"].items():
        d = c["results"][procedure][str(n)]
        items.append((f"{name} − {baseline}\n{label}", d["difference"], d["ci_low"], d["ci_high"]))
        s = c["standard"]
        items.append((f"{name} − {baseline}\nstandard (N=1)", s["difference"], s["ci_low"], s["ci_high"]))
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    _draw_curves(left, curves, points, f"{label} win rate vs base", f"{label} win rate vs base")
    _draw_differences(right, items, f"against {baseline}, same prompts and base samples")
    return _save(fig, path)


def plot_demo(arms: Sequence[dict[str, Any]], procedure: str, n: int, kl_budget: float, path,
              comparison: dict[str, Any] | None = None) -> Path:
    """The demo's predicted win-rate-vs-KL curves (each arm's transform and the optimum) with each measured arm,
    and beside them the paired difference of the comparison (demo/run.py) with its interval.

    arms: the demo report's arms (name, transform text, kl, win_rate, ci_low, ci_high); comparison: the demo
    report's `comparison` (policy, baseline, difference, ci, kl, and `standard` when measured).
    """
    kl_max = max([1.5 * kl_budget] + [1.2 * r["kl"] for r in arms])
    curves = tradeoff_curves(procedure, n, [(r["transform"], parse_transform(r["transform"])) for r in arms],
                             kl_max=kl_max, num_points=16)
    # Each measured point in its curve's color (curves take the color cycle C0, C1, ... in order).
    points = [(max(r["kl"], 0.0), r["win_rate"], f"measured {r['name']}", (r["ci_low"], r["ci_high"]),
               {"color": f"C{i}", "marker": "s"}) for i, r in enumerate(arms)]
    label = _label(procedure, n)
    plt = _pyplot()
    if comparison is None:
        fig, left = plt.subplots(figsize=(6.4, 4.4))
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
        c, pair = comparison, f"{comparison['policy']} − {comparison['baseline']}"
        items = [(f"{pair}\n{label}", c["difference"], *c["ci"])]
        if c.get("standard"):
            items.append((f"{pair}\nstandard (N=1)", c["standard"]["difference"], *c["standard"]["ci"]))
        kls = ", ".join(f"{name} {kl:.3f}" for name, kl in c["kl"].items())
        _draw_differences(right, items, f"paired by prompt, KL {kls}")
    _draw_curves(left, curves, points, f"demo: {label} win rate vs base", f"{label} win rate vs base")
    return _save(fig, path)
