"""`infalign tradeoff`: what a transform and β buy at inference time, before any training (docs/math.md §4, §7).

Three modes: a transform with --beta or --kl (its KL and win rates), --optimal --kl (the best achievable),
--choose --kl (the best exp tilt and its β, beside identity, log and the optimum). With --num-samples K, the
transform (or the chosen tilt) restricted to K samples per prompt too: the β at which a learner on K samples
pays the KL, and the win rate it reaches (core/finite_k.py, docs/math.md §10).
"""

from __future__ import annotations

import json

from ._common import add_command, load, served


def _output_flags(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="write win rate vs KL for identity, log, the chosen exp "
                   "and the optimum")


def add_parser(subparsers) -> None:
    add_command(
        subparsers, "tradeoff", "TradeoffConfig", run,
        help="predicted KL and best-/worst-of-N win rates of a transform and beta; choose them for a KL budget",
        description="Calibrated-space predictions (no model needed). Give a transform with --beta B or --kl K, or "
        "--optimal --kl K for the best achievable win rate, or --choose --kl K for the best exp tilt and its beta. "
        "--num-samples K adds the beta at which an offline learner on K samples per prompt pays the KL (the finite-K "
        "model; the beta to train at). "
        "Example: infalign tradeoff --procedure bon --n 4 --choose --kl 0.25 --num-samples 32 --plot tradeoff.png",
        more_flags=_output_flags)


def _transform(cfg):
    from ..core.errors import InfalignError
    from ..core.transforms import get_transform, parse_transform

    text = cfg.transform or "identity"
    if cfg.tilt is None:
        return parse_transform(text)
    if ":" in text:
        raise InfalignError(f"give the tilt once: --transform {text!r} already has one, and --tilt {cfg.tilt:g}")
    return get_transform(text, cfg.tilt)


def _row(label, tilt, beta, kl, win, std):
    return {"label": label, "tilt": tilt, "beta": beta, "kl": kl, "win_rate": win, "standard_win_rate": std}


def _at_kl(transform, kl, procedure, n):
    """The row of `transform` at KL = kl, or None when no β reaches it."""
    from ..core import tradeoff as T
    from ..core.errors import InfalignError

    try:
        p = T.predict(transform, T.beta_for_kl(transform, kl), procedure, n)
    except InfalignError:
        return None
    return _row(str(transform), transform.tilt, p.beta, p.kl, p.win_rate, p.standard_win_rate)


def _finite_k(transform, k, procedure, n, kl=None, beta=None) -> dict:
    """The tilt restricted to K samples: at the β where it pays `kl` (finite_k_beta), or at `beta`."""
    from ..core import finite_k as FK

    if beta is None:
        beta = FK.finite_k_beta(transform, kl, k)
    at_n = FK.finite_k_tilt(transform, beta, k, procedure, n)
    at_1 = FK.finite_k_tilt(transform, beta, k, procedure, 1)
    return {"num_samples": k, "beta": at_n.beta, "kl": at_n.kl, "win_rate": at_n.win_rate,
            "standard_win_rate": at_1.win_rate}


def run(args) -> int:
    from ..config import TradeoffConfig
    from ..core import tradeoff as T
    from ..core.errors import InfalignError
    from ..core.transforms import Transform

    cfg = load(args, TradeoffConfig)
    if args.plot:  # a file matplotlib cannot write is refused before the computation, not after it
        from ..plots import check_plot_path

        check_plot_path(args.plot)
    procedure, n = cfg.procedure, cfg.n
    rows = []
    if cfg.choose:
        c = T.choose(procedure, n, cfg.kl, with_optimum=False)
        try:
            opt = T.optimal(procedure, n, cfg.kl)
        except InfalignError:  # an extreme budget the optimum cannot reach (win rate ≈ 1): show the tilt only
            opt = None
        result = {"transform": c.transform.name, "tilt": c.tilt, "beta": c.beta, "kl": c.kl, "win_rate": c.win_rate,
                  "standard_win_rate": c.standard_win_rate, "optimal_win_rate": opt and opt.win_rate}
        rows = [_at_kl(Transform("identity"), cfg.kl, procedure, n), _at_kl(Transform("log"), cfg.kl, procedure, n),
                _row(f"chosen {c.transform}", c.tilt, c.beta, c.kl, c.win_rate, c.standard_win_rate)]
        plotted, kl_star = c.transform, c.kl
    elif cfg.optimal:
        opt = T.optimal(procedure, n, cfg.kl)
        result = {"transform": "optimal", "tilt": None, "beta": opt.beta, "kl": opt.kl, "win_rate": opt.win_rate,
                  "standard_win_rate": opt.standard_win_rate}
        plotted, kl_star = None, opt.kl
    else:
        transform = _transform(cfg)
        beta = cfg.beta if cfg.beta is not None else T.beta_for_kl(transform, cfg.kl)
        p = T.predict(transform, beta, procedure, n)
        result = {"transform": transform.name, "tilt": transform.tilt, "beta": p.beta, "kl": p.kl,
                  "win_rate": p.win_rate, "standard_win_rate": p.standard_win_rate}
        rows = [_row(str(transform), transform.tilt, p.beta, p.kl, p.win_rate, p.standard_win_rate)]
        plotted, kl_star = transform, p.kl
        opt = None
        if not args.json and p.kl > 1e-6:  # the yardstick, for the table only (it costs a solve)
            try:
                opt = T.optimal(procedure, n, p.kl)
            except InfalignError:
                opt = None
    if cfg.num_samples is not None:
        restricted = c.transform if cfg.choose else transform
        fk = _finite_k(restricted, cfg.num_samples, procedure, n, kl=cfg.kl, beta=None if cfg.kl else cfg.beta)
        result["finite_k"] = fk
        rows.append(_row(f"{restricted} on K={cfg.num_samples}", restricted.tilt, fk["beta"], fk["kl"],
                         fk["win_rate"], fk["standard_win_rate"]))
    if opt is not None:
        rows.append(_row("optimal", None, opt.beta, opt.kl, opt.win_rate, opt.standard_win_rate))
    result = {"procedure": procedure, "n": n, **{k: (float(v) if isinstance(v, float) else v)
                                                 for k, v in result.items()}}

    if args.plot:
        _plot(args.plot, cfg, procedure, n, plotted, kl_star, result)
    if args.json:
        print(json.dumps(result))
        return 0
    _print_table(procedure, n, rows)
    if cfg.num_samples is not None:
        print(f"on K={cfg.num_samples}: the tilt restricted to K samples per prompt (docs/math.md §10), what an offline "
              "learner that fits its samples reaches; its beta is the one to train at for this KL (its KL is against "
              "the K samples)")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _print_table(procedure, n, rows) -> None:
    print(f"{served(procedure, n)} ({procedure}) win rate against the base model served the same way (docs/math.md §4)")
    print(f"{'transform':26s} {'beta':>10s} {'KL':>8s} {f'{procedure}-{n} win':>11s} {'std win':>9s}")
    for r in rows:
        if r is None:
            continue
        print(f"{r['label']:26s} {r['beta']:10.4g} {r['kl']:8.4f} {r['win_rate']:11.6f} {r['standard_win_rate']:9.6f}")


def _plot(path, cfg, procedure, n, plotted, kl_star, result) -> None:
    from ..core import tradeoff as T
    from ..core.transforms import Transform
    from ..plots import plot_tradeoff_curves

    kl_max = cfg.kl_max or min(max(2.0 * kl_star, 0.1), 10.0)
    transforms = [Transform("identity"), Transform("log")]
    if cfg.choose:
        transforms.append((f"chosen {plotted}", plotted))
    else:
        if n > 1 and kl_star > 1e-6:  # the exp tilt `--choose` would pick at this KL, for comparison
            best = T.choose(procedure, n, kl_star, with_optimum=False).transform
            transforms.append((f"best exp at KL {kl_star:.3g}: {best}", best))
        if plotted is not None and plotted.name not in ("identity", "log"):
            transforms.append(plotted)
    curves = T.tradeoff_curves(procedure, n, transforms, kl_max=kl_max)
    label = f"{result['transform']}" + (f" t={result['tilt']:.3g}" if result.get("tilt") is not None else "")
    points = [(result["kl"], result["win_rate"], f"{label}, beta={result['beta']:.3g}", None)]
    plot_tradeoff_curves(curves, path, points, title=f"{procedure}-{n}: win rate vs KL",
                         ylabel=f"{procedure}-{n} win rate vs base")
