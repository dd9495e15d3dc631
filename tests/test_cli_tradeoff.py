"""`infalign tradeoff` end to end through cli.main (the core import guard is in test_core_imports.py)."""

import json

import pytest

from offline_infalign.cli import main
from offline_infalign.core import tradeoff as T
from offline_infalign.core.transforms import Transform


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object
    return json.loads(out)


def test_choose_json(capsys):
    r = _json(capsys, ["tradeoff", "--procedure", "bon", "--n", "4", "--choose", "--kl", "0.25", "--json"])
    assert {"kl", "beta", "win_rate", "standard_win_rate", "transform", "tilt", "optimal_win_rate"} <= set(r)
    assert r["transform"] == "exp" and r["tilt"] > 0 and r["kl"] == pytest.approx(0.25, abs=1e-8)
    assert r["optimal_win_rate"] >= r["win_rate"] - 1e-9
    # the JSON describes a real tilt: recompute it from the printed transform, tilt and beta
    assert r["win_rate"] == pytest.approx(T.win_rate(Transform("exp", r["tilt"]), r["beta"], "bon", 4), abs=1e-10)


def test_transform_modes_json(capsys):
    # log at beta = 1/(N-1) is the base best-of-N: KL = log N − (N−1)/N, win rate N/(N+1) (docs/math.md §4)
    r = _json(capsys, ["tradeoff", "--n", "4", "--transform", "log", "--beta", str(1 / 3), "--json"])
    assert r["kl"] == pytest.approx(1.3862943611198906 - 0.75, abs=1e-8)
    assert r["win_rate"] == pytest.approx(0.8, abs=1e-8)
    r = _json(capsys, ["tradeoff", "--procedure", "won", "--transform", "exp", "--tilt", "-5", "--kl", "0.3",
                       "--json"])
    assert r["kl"] == pytest.approx(0.3, abs=1e-8) and r["tilt"] == -5.0
    r2 = _json(capsys, ["tradeoff", "--procedure", "won", "--transform", "exp:tilt=-5", "--kl", "0.3", "--json"])
    assert r2 == r
    r = _json(capsys, ["tradeoff", "--procedure", "won", "--n", "2", "--optimal", "--kl", "0.3", "--json"])
    assert {"kl", "beta", "win_rate", "standard_win_rate"} <= set(r) and r["kl"] == pytest.approx(0.3, abs=1e-6)


def test_table_and_plot(capsys, tmp_path):
    png = tmp_path / "tradeoff.png"
    assert main(["tradeoff", "--choose", "--kl", "0.2", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for word in ("identity", "log", "chosen exp", "optimal"):
        assert word in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_file_matplotlib_cannot_write_is_refused_before_computing(capsys, tmp_path, monkeypatch):
    """The format comes from the extension: one matplotlib does not write (or none) is one line, and nothing is
    computed first (`choose` would take a second or more)."""
    from offline_infalign.core import tradeoff

    monkeypatch.setattr(tradeoff, "choose", lambda *a, **k: pytest.fail("computed before the plot file was checked"))
    (tmp_path / "afile").write_text("")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = ", ".join(sorted(FigureCanvasBase.get_supported_filetypes()))  # png, pdf, svg, ... (this matplotlib's)
    assert "png" in formats and "pdf" in formats
    for path, said in ((tmp_path / "x.xyz", f"has extension '.xyz'; the format is taken from the extension, one of: "
                                            f"{formats}"),
                       (tmp_path / "x", "has no extension; the format is taken from the extension, one of: "),
                       (tmp_path / "afile" / "x.png", f"cannot be written: {str(tmp_path / 'afile')!r} is a file")):
        assert main(["tradeoff", "--choose", "--kl", "0.2", "--plot", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"infalign tradeoff: error: plot file {str(path)!r} {said}") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--procedure", "mon", "--kl", "0.1"], "'mon'"),
        (["--n", "0", "--kl", "0.1"], "got 0"),
        (["--beta", "-1"], "-1"),
        (["--kl", "100"], "kl=100"),
        (["--transform", "exp", "--kl", "0.1"], "needs a tilt"),
        (["--transform", "exp", "--tilt", "0", "--kl", "0.1"], "t=0"),
        (["--transform", "bogus", "--kl", "0.1"], "'bogus'"),
        (["--choose"], "--kl"),
        (["--kl", "0.1", "--beta", "1"], "exactly one"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, needle):
    assert main(["tradeoff", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_help(capsys):
    for argv in (["--help"], ["tradeoff", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "tradeoff" in capsys.readouterr().out



def test_num_samples_gives_the_finite_k_beta(capsys):
    from offline_infalign.core.finite_k import finite_k_beta, restricted_kl

    r = _json(capsys, ["tradeoff", "--choose", "--kl", "0.3", "--num-samples", "32", "--json"])
    fk = r["finite_k"]
    chosen = Transform("exp", r["tilt"])
    assert fk["num_samples"] == 32 and fk["beta"] == pytest.approx(finite_k_beta(chosen, 0.3, 32))
    assert fk["kl"] == pytest.approx(0.3) and fk["beta"] < r["beta"]  # a learner on K samples needs a smaller β
    assert fk["win_rate"] < r["win_rate"]  # the finite-K ceiling
    # With --beta: the restricted tilt at that β.
    r = _json(capsys, ["tradeoff", "--transform", "identity", "--beta", "0.3", "--num-samples", "16", "--json"])
    assert r["finite_k"]["beta"] == 0.3
    assert r["finite_k"]["kl"] == pytest.approx(restricted_kl(Transform("identity"), 0.3, 16))
    assert main(["tradeoff", "--transform", "exp:tilt=11", "--kl", "0.3", "--num-samples", "32"]) == 0
    out = capsys.readouterr().out
    assert "exp:tilt=11 on K=32" in out and "on K=32: the tilt restricted" in out


@pytest.mark.parametrize("argv,needle", [
    (["--kl", "0.3", "--num-samples", "1"], "got 1"),
    (["--optimal", "--kl", "0.3", "--num-samples", "32"], "not --optimal"),
    (["--transform", "exp:tilt=11", "--kl", "3.6", "--num-samples", "32"], "log K = 3.466"),
])
def test_num_samples_bad_input(capsys, argv, needle):
    assert main(["tradeoff", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
