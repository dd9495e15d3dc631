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
            "--eval-prompts", "4", "--eval-samples", "4", "--per-device-train-batch-size", "4"]
    return out, argv


def test_demo_runs_end_to_end_and_resumes(demo_run, capsys):
    out, argv = demo_run
    assert main(argv) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "run" / "demo_report.json").read_text())
    assert [a["name"] for a in report["arms"]] == ["identity", "exp"]
    exp_arm = report["arms"][1]
    assert exp_arm["tilt"] > 0  # best-of-N wants a positive tilt (docs/math.md §5)
    for arm in report["arms"]:
        assert 0.0 <= arm["ci_low"] <= arm["win_rate"] <= arm["ci_high"] <= 1.0
        assert arm["predicted_win_rate"] is not None and arm["predicted_kl"] == pytest.approx(0.3, abs=1e-6)
        assert len(arm["examples"]) == 3 and all(ex["policy"]["completion"] for ex in arm["examples"])
        # One β correction: the second try's β is the first's scaled by sqrt(measured KL / budget).
        first, second = arm["tries"]
        assert second["beta"] == pytest.approx(first["beta"] * (max(first["kl"], 1e-3) / 0.3) ** 0.5)
    assert (out / "run" / "demo_tradeoff.png").stat().st_size > 10_000
    assert "best-of-4 win rate" in text and "identity" in text and "samples before" in text

    # A rerun with the same command finds every stage finished and reproduces the same numbers.
    (out / "run" / "demo_report.json").unlink()
    assert main(argv) == 0
    again = json.loads((out / "run" / "demo_report.json").read_text())
    assert [a["win_rate"] for a in again["arms"]] == [a["win_rate"] for a in report["arms"]]


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
                                         ({"procedure": "mean"}, "procedure"), ({"kl": 0}, "kl")])
def test_demo_config_rejects_bad_values(bad, needle):
    with pytest.raises(InfalignError, match=needle):
        DemoConfig(**bad)
