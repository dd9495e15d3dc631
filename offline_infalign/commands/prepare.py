"""`infalign prepare`: calibrated rewards, targets Φ(u) and a pairs / listwise / bon training dataset."""

from __future__ import annotations

from ..config.base import spell
from ..kinds import KIND_NAMES
from ._common import add_command, load


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "prepare", "PrepareConfig", run,
        help=f"calibrate, transform and write a training dataset ({spell(KIND_NAMES)})",
        description="Per prompt: calibrated_rewards (docs/math.md §2), targets = transform(u), then the dataset kind, "
        "split into train/test by prompt_id. --transform auto --procedure bon --n 4 --kl 0.3 takes the transform "
        "and beta from the tradeoff tool.")


def describe(m) -> str:
    tilt = "" if m["tilt"] is None else f" tilt={m['tilt']:g}"
    rows = ", ".join(f"{k} {v}" for k, v in m["num_rows"].items())
    skipped = "".join(f"; {m[k]} {what} skipped" for k, what in (("skipped_tied_pairs", "tied pairs"),
                                                                  ("skipped_tied_prompts", "all-tied prompts"))
                      if m.get(k))
    pairs = f" ({m['pairs']} pairs)" if m.get("pairs") else ""
    return f"prepared {m['kind']}{pairs}: transform {m['transform']}{tilt}, beta={m['beta']:.4g}; rows: {rows}{skipped}"


def describe_guidance(m) -> list[str]:
    """The docs/math.md §7 guidance lines and the manifest's warnings."""
    lines = []
    g = m.get("guidance")
    if g:
        lines.append(f"guidance for {g['procedure']}-{g['n']} at beta={g['beta']:.4g}: predicted win rate "
                     f"{g['predicted_win_rate']:.4f} (KL {g['predicted_kl']:.3g}); finite-K ceiling at "
                     f"K={g['num_samples']}: {g['ceiling_win_rate']:.4f}; beta floor for this K: {g['beta_floor']:.3g}")
    lines += [f"WARNING: {w}" for w in m.get("warnings") or []]
    return lines


def run(args) -> int:
    from ..config import PrepareConfig
    from ..stages.prepare import run_prepare

    cfg = load(args, PrepareConfig)
    m = run_prepare(cfg)
    print(describe(m) + f" -> {cfg.out}")
    if m.get("predicted"):
        p = m["predicted"]
        print(f"predicted at KL {p['kl']:.3g}: {m['procedure']}-{m['n']} win rate {p['win_rate']:.4f}, "
              f"standard win rate {p['standard_win_rate']:.4f}")
    for line in describe_guidance(m):
        print(line)
    return 0
