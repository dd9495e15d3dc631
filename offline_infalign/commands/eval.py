"""`infalign eval`: best-/worst-of-N win rates of adapters against their base model and their KL (docs/math.md §8);
with several policies, each one's paired difference from a baseline (§10)."""

from __future__ import annotations

import argparse

from ._common import add_command, load


def _int_list(text: str) -> list[int]:
    """'4,8' or '4' → [4, 8] / [4]; the contract spells several N as one comma-separated value."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"N must be integers like 4 or 4,8,16, got {text!r}") from None


def _procedures_spelled() -> str:
    """'bon, won or bon,won': one procedure or several, comma-separated, as the registry names them."""
    from ..core.procedures import PROCEDURES

    return f"{', '.join(PROCEDURES)} or {','.join(PROCEDURES)}"


def _procedure_list(text: str) -> list[str]:
    from ..core.procedures import PROCEDURES

    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PROCEDURES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"procedure must be {_procedures_spelled()}, got {text!r}")
    return values


def _list_flags(p) -> None:
    # Several policies: `--policy A --policy B` or `--policy A B` (extend, not replace, like --n).
    p.add_argument("--policy", dest="policy", action="extend", default=None, nargs="+", metavar="[NAME=]FOLDER",
                   help="adapter folder written by `infalign train`; give several (--policy A --policy B, or "
                   "NAME=FOLDER to name one: its name in the report, default the folder's name) to judge them on "
                   "the same prompts against one set of base samples and compare each with --baseline")
    # Several values per flag, comma- or space-separated (`--n 1,2,4` or `--n 1 2 4`); flattened in `run`.
    p.add_argument("--n", dest="n", type=_int_list, action="extend", default=None, nargs="+",
                   help="values of N in [1, --samples], e.g. 4 or 1,2,4,8 (default: 1, 2, 4, ..., --samples itself "
                   "and the trained N)")
    p.add_argument("--procedure", dest="procedure", type=_procedure_list, action="extend", default=None, nargs="+",
                   help=f"{_procedures_spelled()} (default: the procedure the adapter was trained for)")


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "eval", "EvalConfig", run,
        help="measure adapters: BoN/WoN win rate vs base with intervals, KL, the predicted values; compare several",
        description="Sample M completions per held-out prompt from the adapter and from its base model (temperature "
        "1, the same stop set and max_new_tokens), score them with the judge, and write DIR/report.json (per "
        "procedure and N <= M: win_rate, ci_low, ci_high, predicted; overall kl, kl_stderr, standard win rate; per "
        "side cut_fraction and mean_length; notes) plus plots. Defaults (base model, judge, prompts, "
        "transform, beta) come from the adapter's infalign_train.json. With several --policy, every policy is "
        "judged on the same prompts against base samples drawn once, and report.json adds, per policy against "
        "--baseline, the difference of each win rate with a paired bootstrap interval over prompts, beside both "
        "KLs and whether they are matched (--kl-tolerance). The samples stay in DIR (base_samples.jsonl, and each "
        "policy's under policy_samples/ by the adapter's content): a later eval into DIR (or with --samples-cache "
        "DIR) with the same base model, prompts, --samples, --max-new-tokens, stop set, dtype and seed samples only "
        "what it has not sampled yet.",
        skip=("n", "procedure", "policy"), more_flags=_list_flags)


def _flatten(values):
    return None if values is None else [v for group in values for v in (group if isinstance(group, list) else [group])]


def _table(report) -> None:
    """One policy's lines: its judge and prompts, lengths, KL and the win-rate table."""
    print(f"policy {report['policy']}  ({report['transform'] or 'no transform'}, beta={report['beta']})")
    label = f" (label {report['reward_label']})" if report.get("reward_label") is not None else ""
    print(f"judge {report['reward_model']}{label}  prompts {report['num_prompts']} x {report['samples']} samples "
          "per side")
    cut, length = report["cut_fraction"], report["mean_length"]
    print(f"cut at max_new_tokens={report['max_new_tokens']}: policy {cut['policy']:.1%}, base {cut['base']:.1%}"
          f"   mean length (tokens): policy {length['policy']:.1f}, base {length['base']:.1f}")
    pkl = report.get("predicted_kl")
    seq = (f"   (log-ratio estimate {report['kl_sequence']:.4f} ± {report['kl_sequence_stderr']:.4f})"
           if report.get("kl_sequence") is not None else "")
    print(f"KL  {report['kl']:.4f} ± {report['kl_stderr']:.4f}" + (f"   predicted {pkl:.4f}" if pkl is not None else "")
          + seq)
    rows = [("standard (N=1)", report["standard_win_rate"])]
    for procedure, by_n in report["results"].items():
        rows += [(f"{procedure} N={n}", e) for n, e in sorted(by_n.items(), key=lambda kv: int(kv[0]))]
    print(f"{'':16s} {'win rate':>9s} {'CI':>17s} {'predicted':>10s}")
    for name, e in rows:
        pred = "" if e["predicted"] is None else f"{e['predicted']:.3f}"
        print(f"{name:16s} {e['win_rate']:9.3f}  [{e['ci_low']:.3f}, {e['ci_high']:.3f}] {pred:>10s}")


def _notes(notes) -> None:
    from ..artifacts.report import PREDICTION_NOTE

    for note in notes:
        if note != PREDICTION_NOTE:  # the same every run; it stays in report.json
            print(f"note: {note}")


def _diff(d) -> str:
    return f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _comparisons(report) -> None:
    """The paired differences against the baseline, one line per policy and win rate."""
    baseline = report["baseline"]
    print(f"\npaired differences against {baseline} (same prompts and base samples; "
          f"{report['confidence']:.0%} paired bootstrap interval over prompts):")
    print(f"{'policy':14s} {'KL policy / ' + baseline:>24s} {'matched':>8s}  {'win rate':16s} {'difference':>24s}")
    for name, c in report["comparisons"].items():
        kl = f"{c['kl'][name]:.3f} / {c['kl'][baseline]:.3f}"
        matched = "yes" if c["kl_matched"] else "NO"
        lines = [("standard (N=1)", c["standard"])]
        for procedure, by_n in c["results"].items():
            lines += [(f"{procedure} N={n}", d) for n, d in sorted(by_n.items(), key=lambda kv: int(kv[0]))]
        for i, (what, d) in enumerate(lines):
            head = f"{name:14s} {kl:>24s} {matched:>8s}" if i == 0 else " " * 48
            print(f"{head}  {what:16s} {_diff(d):>24s}")
    print(f"matched: the two measured KLs within {report['kl_tolerance']:g} nats (--kl-tolerance)")


def run(args) -> int:
    from ..config import EvalConfig
    from ..stages.evaluate import evaluate

    args.n = _flatten(args.n)
    args.procedure = _flatten(args.procedure)
    cfg = load(args, EvalConfig)
    report = evaluate(cfg)

    if "policies" not in report:
        _table(report)
        _notes(report["notes"])
    else:
        for name, r in report["policies"].items():
            print(f"== {name}")
            _table(r)
            _notes(r["notes"])
            print()
        _comparisons(report)
        _notes(report["notes"])
    print(f"wrote {cfg.out}/report.json" + (" and plots" if report.get("plots") else ""))
    return 0
