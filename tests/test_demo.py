"""The embedded demo end to end at reduced size (tiny base-model budget, few prompts and steps)."""

import json

import pytest

from offline_infalign.cli import main
from offline_infalign.config import DemoConfig
from offline_infalign.core.errors import InfalignError


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--out", str(out / "run"), "--cache-dir", str(out / "cache"), "--model-train-steps", "40",
            "--num-prompts", "10", "--num-samples", "4", "--max-new-tokens", "12", "--max-steps", "3",
            "--eval-prompts", "4", "--eval-samples", "4", "--per-device-train-batch-size", "4",
            "--kl-corrections", "1"]
    return out, argv


def test_demo_runs_end_to_end_and_resumes(demo_run, capsys, caplog):
    import logging
    import warnings

    from offline_infalign.core.finite_k import finite_k_beta
    from offline_infalign.core.kl_match import Try, matched_pair, next_beta
    from offline_infalign.core.transforms import Transform

    out, argv = demo_run
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert main(argv) == 0
    # No warning reaches the reader: DeprecationWarnings (torch's own, at import) are hidden outside __main__.
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    assert [r.getMessage() for r in caplog.records] == []
    text = capsys.readouterr().out
    report = json.loads((out / "run" / "demo_report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["identity", "exp"]
    identity, exp_arm = report["arms"]
    assert exp_arm["tilt"] > 0  # best-of-N wants a positive tilt (docs/math.md §5)
    for arm in report["arms"]:
        assert 0.0 <= arm["ci_low"] <= arm["win_rate"] <= arm["ci_high"] <= 1.0
        assert arm["predicted_win_rate"] is not None
        assert len(arm["examples"]) == 3 and all(ex["policy"]["completion"] for ex in arm["examples"])
    # KL matched by design: identity starts at the finite-K beta of the budget, exp at that of identity's KL;
    # each correction is core.kl_match's step from the tries before it.
    chosen = min(identity["tries"], key=lambda t: abs(t["kl"] - 0.3))["kl"]
    targets = {"identity": 0.3, "exp": chosen}
    for arm in report["arms"]:
        transform, tries = Transform(arm["transform"].split(":")[0], arm["tilt"]), arm["tries"]
        assert 1 <= len(tries) <= 2
        assert tries[0]["beta"] == pytest.approx(finite_k_beta(transform, targets[arm["name"]], 4))
        for i in range(1, len(tries)):
            done = [Try(t["beta"], t["kl"]) for t in tries[:i]]
            assert tries[i]["beta"] == pytest.approx(next_beta(transform, targets[arm["name"]], 4, done, 0.02, 1))
        # The chosen try, measured again in the comparison (the same draws; float rounding may differ).
        assert min(abs(arm["kl"] - t["kl"]) for t in tries) < 1e-4
    # The pair compared: of all pairs of tries, the matched one nearest the budget (KLs only).
    pair = matched_pair(*[[Try(t["beta"], t["kl"]) for t in arm["tries"]] for arm in report["arms"]], 0.3, 0.03)
    assert [arm["beta"] for arm in report["arms"]] == pytest.approx([pair[0].beta, pair[1].beta])
    # The comparison: both policies in one evaluation, paired by prompt against the same base samples.
    c = report["comparison"]
    assert (c["policy"], c["baseline"], c["procedure"], c["n"]) == ("exp", "identity", "bon", 4)
    assert c["ci"][0] <= c["difference"] <= c["ci"][1]
    assert c["kl"] == {"exp": exp_arm["kl"], "identity": identity["kl"]}
    assert c["kl_matched"] == (abs(exp_arm["kl"] - identity["kl"]) <= 0.03)
    ev = json.loads((out / "run" / "eval" / "report.json").read_text())
    assert ev["comparisons"]["exp"]["results"]["bon"]["4"]["difference"] == c["difference"]
    assert c["difference"] == pytest.approx(exp_arm["win_rate"] - identity["win_rate"])
    # The base samples were drawn once, by the first try's measurement, and reused by every later one.
    notes = [json.loads(p.read_text())["base_samples"]["note"]
             for p in sorted((out / "run" / "tries").glob("*/report.json"), key=lambda p: p.stat().st_mtime)]
    assert notes[0].startswith("drawn") and set(notes[1:]) <= {"reused"} and ev["base_samples"]["note"] == "reused"
    assert (out / "run" / "demo_tradeoff.png").stat().st_size > 10_000
    first, second = text.split("\n\n")[1].splitlines()[:2]  # the result's first line: the paired difference
    assert first.startswith("exp − identity: best-of-4 win rate ") and "at KL" in first
    assert f"{c['difference']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]" in first and "paired bootstrap" in second
    assert "identity" in text and "samples before" in text

    # A rerun with the same command finds every stage finished and reproduces the same numbers.
    (out / "run" / "demo_report.json").unlink()
    assert main(argv) == 0
    again = json.loads((out / "run" / "demo_report.json").read_text())
    assert again["comparison"] == c and [a["win_rate"] for a in again["arms"]] == [a["win_rate"] for a in
                                                                                  report["arms"]]


def test_demo_refuses_other_settings_in_the_same_folder(demo_run, capsys):
    out, argv = demo_run
    if not (out / "run" / "data" / "samples" / "manifest.json").exists():
        assert main(argv) == 0
    capsys.readouterr()
    changed = [a if a != "12" else "10" for a in argv]  # another max_new_tokens
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens: 12 -> 10" in err and "Traceback" not in err
    # Training settings too, though sampling would accept them: the old adapters must not be reused silently.
    more_steps = [a if a != "3" else "5" for a in argv]  # --max-steps 3 -> 5
    assert main(more_steps) == 2
    assert "max_steps: 3 -> 5" in capsys.readouterr().err


@pytest.mark.parametrize("bad, needle", [({"num_samples": 1}, "num_samples"), ({"n": 32, "eval_samples": 16}, "n=32"),
                                         ({"procedure": "mean"}, "procedure"), ({"kl": 0}, "kl"),
                                         ({"kl_corrections": -1}, "kl_corrections"),
                                         ({"kl_tolerance": 0}, "kl_tolerance")])
def test_demo_config_rejects_bad_values(bad, needle):
    with pytest.raises(InfalignError, match=needle):
        DemoConfig(**bad)
