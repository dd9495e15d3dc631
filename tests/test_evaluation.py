"""Evaluation (docs/math.md §8): the report's numbers against brute force, its keys, configs and settings.

The stage on tiny models (sampled ids, stop sets, the CLI) is in test_eval_end_to_end.py."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from offline_infalign.artifacts.report import default_ns, summarize
from offline_infalign.artifacts.training_record import resolve_settings
from offline_infalign.config import EvalConfig, load_config
from offline_infalign.core.errors import InfalignError


def brute_force_win_rate(policy_rewards, base_rewards, n, procedure):
    """Enumerate every N-subset (without replacement) of each side's samples (docs/math.md §8).

    For one prompt: W = mean over all N-subsets S of the M policy samples and T of the M' base samples of
    1[r(y*) > r(z*)] + ½ 1[=], y* / z* the best (bon) or worst (won) of the subset; then the mean over prompts.
    Independent of core.estimators, which uses the closed form over order statistics.
    """
    pick = max if procedure == "bon" else min
    per_prompt = []
    for pol, base in zip(policy_rewards, base_rewards):
        ys = [pick(t) for t in itertools.combinations(pol, n)]
        zs = [pick(t) for t in itertools.combinations(base, n)]
        wins = sum((y > z) + 0.5 * (y == z) for y in ys for z in zs)
        per_prompt.append(wins / (len(ys) * len(zs)))
    return float(np.mean(per_prompt))


@pytest.fixture
def sample_set():
    # Small integer rewards so that ties happen and count ½; 4 prompts, M = 3 per side.
    rng = np.random.default_rng(7)
    policy = rng.integers(0, 5, size=(4, 3)).astype(float)
    base = rng.integers(0, 5, size=(4, 3)).astype(float)
    log_ratios = rng.normal(0.3, 0.5, size=(4, 3))
    return policy, base, log_ratios


def test_summarize_win_rates_equal_brute_force(sample_set):
    policy, base, log_ratios = sample_set
    report = summarize(policy, base, log_ratios, ["bon", "won"], [1, 2, 3], num_bootstrap=200, seed=0)
    for procedure in ("bon", "won"):
        for n in (1, 2, 3):
            e = report["results"][procedure][str(n)]
            assert e["win_rate"] == pytest.approx(brute_force_win_rate(policy, base, n, procedure), abs=1e-12)
            assert e["ci_low"] <= e["win_rate"] + 1e-12 and e["win_rate"] <= e["ci_high"] + 1e-12
            assert 0.0 <= e["ci_low"] and e["ci_high"] <= 1.0
            assert e["predicted"] is None
    # Standard win rate is N = 1: both procedures agree with it.
    std = report["standard_win_rate"]["win_rate"]
    assert std == pytest.approx(brute_force_win_rate(policy, base, 1, "bon"), abs=1e-12)
    assert report["results"]["won"]["1"]["win_rate"] == pytest.approx(std, abs=1e-12)


def test_summarize_unequal_sample_counts():
    # M policy samples against M' != M base samples: still the exact enumeration over both sides' subsets.
    rng = np.random.default_rng(11)
    policy = rng.integers(0, 4, size=(3, 5)).astype(float)
    base = rng.integers(0, 4, size=(3, 3)).astype(float)
    report = summarize(policy, base, np.zeros((3, 5)), ["bon", "won"], [2, 3], num_bootstrap=50)
    for procedure in ("bon", "won"):
        for n in (2, 3):
            assert report["results"][procedure][str(n)]["win_rate"] == pytest.approx(
                brute_force_win_rate(policy, base, n, procedure), abs=1e-12)
    assert report["kl"] == 0.0


def test_summarize_hand_computed_case():
    # One prompt. policy {1, 2, 3}, base {2, 2, 0}. N=1: y=1 beats 0 (1/3), y=2 ties 2, 2 and beats 0 (2/3),
    # y=3 wins (1) → mean 2/3. BoN N=2: policy subsets {1,2} {1,3} {2,3} pick 2, 3, 3; base subsets pick 2, 2, 2
    # → (½ + 1 + 1)/3 = 5/6. WoN N=2: policy picks 1, 1, 2; base picks 2, 0, 0 → (2/3 + 2/3 + (½ + 1 + 1)/3)/3.
    report = summarize([[1.0, 2.0, 3.0]], [[2.0, 2.0, 0.0]], [[0.0] * 3], ["bon", "won"], [2], num_bootstrap=50)
    assert report["standard_win_rate"]["win_rate"] == pytest.approx(2 / 3)
    assert report["results"]["bon"]["2"]["win_rate"] == pytest.approx(5 / 6)
    assert report["results"]["won"]["2"]["win_rate"] == pytest.approx((2 / 3 + 2 / 3 + 2.5 / 3) / 3)
    # A single prompt: every bootstrap resample is that prompt, so the interval collapses onto the estimate.
    assert report["results"]["bon"]["2"]["ci_low"] == pytest.approx(5 / 6)
    assert report["results"]["bon"]["2"]["ci_high"] == pytest.approx(5 / 6)


def test_summarize_kl_is_mean_log_ratio(sample_set):
    policy, base, log_ratios = sample_set
    report = summarize(policy, base, log_ratios, ["bon"], [2], num_bootstrap=50)
    assert report["kl"] == pytest.approx(float(log_ratios.mean()), abs=1e-12)
    assert report["kl_stderr"] > 0.0
    # The standard error of a mean of 12 values lies between the per-sample and the per-prompt-mean versions'
    # natural scales; at least it must shrink like 1/sqrt(count): 4 copies of the data → half the stderr.
    big = summarize(np.tile(policy, (4, 1)), np.tile(base, (4, 1)), np.tile(log_ratios, (4, 1)), ["bon"], [2],
                    num_bootstrap=50)
    assert big["kl"] == pytest.approx(report["kl"], abs=1e-12)
    assert big["kl_stderr"] == pytest.approx(report["kl_stderr"] / 2, rel=0.25)


def test_summarize_report_keys_and_predictions(sample_set):
    policy, base, log_ratios = sample_set
    calls = []

    def fake_predict(procedure, n):
        calls.append((procedure, n))
        return SimpleNamespace(win_rate=0.5 + n / 100 + (procedure == "won") / 10, kl=0.25,
                               standard_win_rate=0.6)

    report = summarize(policy, base, log_ratios, ["bon", "won"], [2, 3], predict_fn=fake_predict, num_bootstrap=50)
    assert set(report) >= {"kl", "kl_stderr", "predicted_kl", "standard_win_rate", "results", "mean_reward",
                           "num_prompts", "samples"}
    assert set(report["results"]) == {"bon", "won"}
    assert set(report["results"]["bon"]) == {"2", "3"}
    for e in [report["standard_win_rate"], *report["results"]["bon"].values(), *report["results"]["won"].values()]:
        assert set(e) == {"win_rate", "ci_low", "ci_high", "predicted"}
    assert report["results"]["bon"]["3"]["predicted"] == pytest.approx(0.53)
    assert report["results"]["won"]["2"]["predicted"] == pytest.approx(0.62)
    assert report["predicted_kl"] == 0.25 and report["standard_win_rate"]["predicted"] == 0.6
    assert report["num_prompts"] == 4 and report["samples"] == 3
    assert report["mean_reward"]["policy"] == pytest.approx(policy.mean())
    json.dumps(report)  # the report must be plain JSON


def test_plots_without_a_prediction(sample_set, tmp_path):
    # A foreign adapter (no transform/beta): the win-rate plot has no predicted line and the tradeoff plot only
    # the optimum's curve, but both are written.
    from offline_infalign.plots import plot_tradeoff, plot_win_rate_vs_n

    policy, base, log_ratios = sample_set
    report = summarize(policy, base, np.abs(log_ratios), ["won"], [2], num_bootstrap=50)
    assert plot_win_rate_vs_n(report, tmp_path / "w.png").stat().st_size > 0
    paths = plot_tradeoff(report, tmp_path, transform=None)
    assert [p.name for p in paths] == ["tradeoff_won_n2.png"] and paths[0].stat().st_size > 0


def test_summarize_rejects_bad_input(sample_set):
    policy, base, log_ratios = sample_set
    with pytest.raises(InfalignError, match="prompts"):
        summarize(policy, base[:3], log_ratios, ["bon"], [2])
    with pytest.raises(InfalignError, match="log_ratios"):
        summarize(policy, base, log_ratios[:2], ["bon"], [2])
    with pytest.raises(InfalignError, match="non-finite"):
        summarize(np.where(policy > 2, np.nan, policy), base, log_ratios, ["bon"], [2])
    with pytest.raises(InfalignError, match="procedure"):
        summarize(policy, base, log_ratios, ["best"], [2])


def test_eval_config_checks():
    cfg = EvalConfig(policy="a", n=[2, 4], samples=4, procedure="won")
    assert cfg.procedure == ["won"] and cfg.n == [2, 4]
    with pytest.raises(InfalignError, match="samples=4"):
        EvalConfig(policy="a", n=[8], samples=4)
    with pytest.raises(InfalignError, match="procedure"):
        EvalConfig(policy="a", procedure=["bo"])
    with pytest.raises(InfalignError, match="confidence"):
        EvalConfig(policy="a", confidence=1.5)
    with pytest.raises(InfalignError, match="unknown config key"):
        load_config(EvalConfig, None, {"policy": "a", "num_samples": 3})


def test_default_ns():
    # N = M is included: without replacement the estimate stays unbiased up to N = M (docs/math.md §8).
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(6, trained_n=3) == [1, 2, 3, 4, 6]
    assert default_ns(4, trained_n=16) == [1, 2, 4]
    assert default_ns(1) == [1]


def test_length_summary_and_cut_note():
    from offline_infalign.artifacts.report import cut_note, length_summary

    policy = [{"completion_ids": [[5, 6, 2], [7, 8, 9]], "finish_reasons": ["stop", "length"]},
              {"completion_ids": [[2], [4, 4, 4]], "finish_reasons": ["stop", "length"]}]
    base = [{"completion_ids": [[1, 2], [3, 2]], "finish_reasons": ["stop", "stop"]},
            {"completion_ids": [[9, 9, 9], [8, 2]], "finish_reasons": ["length", "stop"]}]
    got = length_summary({"policy": policy, "base": base})
    # Lengths count the tokens as generated, the stop token included: (3 + 3 + 1 + 3) / 4 and (2 + 2 + 3 + 2) / 4.
    assert got == {"cut_fraction": {"policy": 0.5, "base": 0.25}, "mean_length": {"policy": 2.5, "base": 2.25}}
    note = cut_note(got["cut_fraction"], 3)
    assert "50% of the policy samples and 25% of the base samples hit max_new_tokens=3" in note
    assert cut_note({"policy": 0.05, "base": 0.0}, 3) is None and cut_note({"policy": 0.0, "base": 0.06}, 3)
    with pytest.raises(InfalignError, match="finish reasons \\['eos'\\]"):
        length_summary({"policy": [{"completion_ids": [[1]], "finish_reasons": ["eos"]}]})


def test_eval_config_stop_ids_and_reward_label():
    cfg = EvalConfig(policy="a", stop_token_ids=7, reward_label=1)
    assert cfg.stop_token_ids == [7] and cfg.reward_label == "1"
    with pytest.raises(InfalignError, match="stop_token_ids must be an integer >= 0, got -1"):
        EvalConfig(policy="a", stop_token_ids=[3, -1])
    with pytest.raises(InfalignError, match="reward_label must be an index or a label name"):
        EvalConfig(policy="a", reward_label=" ")


def test_resolve_settings_reads_training_info(tmp_path):
    info = {
        "config": {"model": "base-model", "dataset": "data/prepared", "loss": "tilted_pairwise"},
        "dataset_manifest": {"reward_model": "rm-path", "transform": "exp", "tilt": -4.0, "beta": 0.5},
        "transform": "exp", "tilt": -4.0, "beta": 0.5, "loss": "tilted_pairwise", "procedure": "won", "n": 4,
    }
    s = resolve_settings(EvalConfig(policy=str(tmp_path), samples=8), info)
    assert (s.model, s.reward_model, s.dataset, s.prompts) == ("base-model", "rm-path", "data/prepared",
                                                                           None)
    assert s.procedures == ["won"] and s.ns == [1, 2, 4, 8]
    assert str(s.transform) == "exp:tilt=-4" and s.beta == 0.5
    assert (s.stop_token_ids, s.warnings, s.reward_label) == ([], [], None)
    # Command-line values win over the training info.
    s = resolve_settings(EvalConfig(policy=str(tmp_path), samples=8, model="m2", reward_model="demo",
                                    procedure=["bon"], n=[3], transform="identity", beta=2.0), info)
    assert (s.model, s.reward_model, s.procedures, s.ns, str(s.transform), s.beta) == (
        "m2", "demo", ["bon"], [3], "identity", 2.0)
    # A beta read from the record is checked where it enters, the record named; --beta replaces it unchecked.
    for bad in (float("nan"), "0.5", True):
        with pytest.raises(InfalignError) as exc:
            resolve_settings(EvalConfig(policy=str(tmp_path), samples=8), {**info, "beta": bad})
        assert str(exc.value) == (f"eval: the training record of policy {str(tmp_path)!r}: beta must be a finite "
                                  f"number > 0, got {bad!r}")
    assert resolve_settings(EvalConfig(policy=str(tmp_path), samples=8, beta=2.0), {**info, "beta": "x"}).beta == 2.0
    # A foreign adapter without training info must say which flag is missing.
    with pytest.raises(InfalignError, match="--model"):
        resolve_settings(EvalConfig(policy=str(tmp_path)), {})
    with pytest.raises(InfalignError, match="--reward-model"):
        resolve_settings(EvalConfig(policy=str(tmp_path), model="m"), {})
    with pytest.raises(InfalignError, match="--prompts"):
        resolve_settings(EvalConfig(policy=str(tmp_path), model="m", reward_model="demo"), {})


def test_resolve_settings_stop_ids_label_and_warnings(tmp_path):
    info = {"config": {"model": "m", "dataset": "d"}, "reward_model": "rm",
            "dataset_manifest": {"reward_model": "rm", "reward_label": "positive", "stop_token_ids": [2, 9],
                                 "warnings": ["tempered samples", "beta small"]},
            "warnings": ["tempered samples"]}
    s = resolve_settings(EvalConfig(policy=str(tmp_path)), info)
    # The training samples' stop ids (the model's own are added when sampling), with the command line's.
    assert s.stop_token_ids == [2, 9]
    assert resolve_settings(EvalConfig(policy=str(tmp_path), stop_token_ids=[11, 2]), info).stop_token_ids == [
        2, 9, 11]
    # Training's warnings and the dataset's, each once, in order.
    assert s.warnings == ["tempered samples", "beta small"]
    # The training reward's label applies to the same judge only; the command line's label wins.
    assert s.reward_label == "positive"
    assert resolve_settings(EvalConfig(policy=str(tmp_path), reward_model="rm"), info).reward_label == "positive"
    assert resolve_settings(EvalConfig(policy=str(tmp_path), reward_model="other"), info).reward_label is None
    assert resolve_settings(EvalConfig(policy=str(tmp_path), reward_label="0"), info).reward_label == "0"


def test_cli_parses_comma_lists():
    import argparse

    from offline_infalign.commands import eval as eval_cmd
    from offline_infalign.config import overrides_from_args

    parser = argparse.ArgumentParser()
    eval_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--policy", "p", "--n", "2,4", "8", "--procedure", "bon,won",
                              "--samples", "8", "--reward-model", "demo"])
    args.n, args.procedure = eval_cmd._flatten(args.n), eval_cmd._flatten(args.procedure)
    cfg = load_config(EvalConfig, None, overrides_from_args(args, EvalConfig))
    assert cfg.n == [2, 4, 8] and cfg.procedure == ["bon", "won"] and cfg.samples == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--policy", "p", "--n", "two"])
