"""Plots shared by the tradeoff tool, the evaluation and the demo. matplotlib (Agg) is imported lazily."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["plot_tradeoff_curves"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
