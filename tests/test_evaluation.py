"""Evaluation (docs/math.md §8): the report's numbers against brute force, its keys, the CLI end to end on tiny models."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from offline_infalign.config import EvalConfig, load_config
from offline_infalign.core.errors import InfalignError
from offline_infalign.report import default_ns, summarize
from offline_infalign.training_record import resolve_settings


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
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(6, trained_n=3) == [1, 2, 3, 4]
    assert default_ns(4, trained_n=16) == [1, 2, 4]


def test_resolve_settings_reads_training_info(tmp_path):
    info = {
        "config": {"model": "base-model", "dataset": "data/prepared", "loss": "tilted_pairwise"},
        "dataset_manifest": {"reward_model": "rm-path", "transform": "exp", "tilt": -4.0, "beta": 0.5},
        "transform": "exp", "tilt": -4.0, "beta": 0.5, "loss": "tilted_pairwise", "procedure": "won", "n": 4,
    }
    s = resolve_settings(EvalConfig(policy=str(tmp_path), samples=8), info)
    assert (s["model"], s["reward_model"], s["dataset"], s["prompts"]) == ("base-model", "rm-path", "data/prepared",
                                                                           None)
    assert s["procedures"] == ["won"] and s["ns"] == [1, 2, 4, 8]
    assert str(s["transform"]) == "exp:tilt=-4" and s["beta"] == 0.5
    # Command-line values win over the training info.
    s = resolve_settings(EvalConfig(policy=str(tmp_path), samples=8, model="m2", reward_model="demo",
                                    procedure=["bon"], n=[3], transform="identity", beta=2.0), info)
    assert (s["model"], s["reward_model"], s["procedures"], s["ns"], str(s["transform"]), s["beta"]) == (
        "m2", "demo", ["bon"], [3], "identity", 2.0)
    # A foreign adapter without training info must say which flag is missing.
    with pytest.raises(InfalignError, match="--model"):
        resolve_settings(EvalConfig(policy=str(tmp_path)), {})
    with pytest.raises(InfalignError, match="--reward-model"):
        resolve_settings(EvalConfig(policy=str(tmp_path), model="m"), {})
    with pytest.raises(InfalignError, match="--prompts"):
        resolve_settings(EvalConfig(policy=str(tmp_path), model="m", reward_model="demo"), {})


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


# ---------------------------------------------------------------------------------------------------------
# End to end on tiny models: a LoRA adapter saved with peft directly (independent of the trainer).
# ---------------------------------------------------------------------------------------------------------

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad"]


def _write_adapter(root, base_dir, rm_dir, random_lora: bool):
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    # init_lora_weights=False draws B at random too, so the adapter really changes the policy; the default
    # (B = 0) leaves the policy equal to the base, which the zero-KL test uses.
    # The adapter sits on lm_head: on a random tiny model, attention LoRAs barely move the output distribution.
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["lm_head"], init_lora_weights=not random_lora)
    peft_model = get_peft_model(model, lora)
    adapter = root / ("adapter_random" if random_lora else "adapter_zero")
    peft_model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    info = {
        "config": {"model": str(base_dir), "loss": "tilted_pairwise"},
        "dataset_manifest": {"reward_model": str(rm_dir), "model": str(base_dir)},
        "transform": "exp", "tilt": 5.0, "beta": 0.5, "loss": "tilted_pairwise", "procedure": "bon", "n": 2,
    }
    (adapter / "infalign_train.json").write_text(json.dumps(info))
    return adapter


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tiny_models import save_tiny_lm, save_tiny_reward_model

    root = tmp_path_factory.mktemp("eval")
    base_dir = save_tiny_lm(root / "base", seed=0)
    rm_dir = save_tiny_reward_model(root / "rm", seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return SimpleNamespace(root=root, base=base_dir, rm=rm_dir, prompts=prompts,
                           random=_write_adapter(root, base_dir, rm_dir, True),
                           zero=_write_adapter(root, base_dir, rm_dir, False))


def _run_eval(setup, adapter, out, *extra):
    from offline_infalign.cli import main

    argv = ["eval", "--policy", str(adapter), "--prompts", str(setup.prompts), "--samples", "4",
            "--max-new-tokens", "5", "--num-bootstrap", "100", "--device", "cpu", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_eval_cli_end_to_end(tiny_setup, tmp_path, capsys):
    out = tmp_path / "ev"
    report = _run_eval(tiny_setup, tiny_setup.random, out, "--model", str(tiny_setup.base), "--reward-model",
                       str(tiny_setup.rm), "--procedure", "bon,won", "--n", "2,4")
    assert set(report["results"]) == {"bon", "won"}
    for procedure in ("bon", "won"):
        assert set(report["results"][procedure]) == {"2", "4"}
        for e in report["results"][procedure].values():
            assert 0.0 <= e["ci_low"] <= e["win_rate"] <= e["ci_high"] <= 1.0
            assert 0.0 < e["predicted"] < 1.0  # exp tilt from infalign_train.json → a prediction
    assert report["num_prompts"] == len(PROMPTS) and report["samples"] == 4
    assert report["transform"] == "exp:tilt=5" and report["beta"] == 0.5
    assert report["kl"] > 0.0 and report["kl_stderr"] > 0.0  # a random LoRA moves the policy away from the base
    assert report["notes"] and "tilted policy" in report["notes"][0]
    pngs = ["win_rate_vs_n.png"] + [f"tradeoff_{p}_n{n}.png" for p in ("bon", "won") for n in (2, 4)]
    assert sorted(report["plots"]) == sorted(str(out / f) for f in pngs)
    assert all((out / f).stat().st_size > 0 for f in pngs)

    # The report is recomputable from the saved samples: summarize on them gives the same numbers.
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(PROMPTS) and all(len(r["policy_completions"]) == 4 for r in rows)
    pol = np.array([r["policy_rewards"] for r in rows])
    base = np.array([r["base_rewards"] for r in rows])
    assert report["results"]["bon"]["4"]["win_rate"] == pytest.approx(brute_force_win_rate(pol, base, 4, "bon"))
    assert report["kl"] == pytest.approx(np.mean([r["log_ratios"] for r in rows]))
    printed = capsys.readouterr().out
    assert "bon N=4" in printed and "KL" in printed

    # The base side really is the base model (adapter disabled): the same draws as sampling the saved base LM
    # directly with the base seed (seed + 1); the policy side differs from it.
    from transformers import AutoModelForCausalLM

    from offline_infalign.modeling import load_tokenizer
    from offline_infalign.sampling import sample_completions

    base_lm = AutoModelForCausalLM.from_pretrained(tiny_setup.base).eval()
    direct = sample_completions(base_lm, load_tokenizer(str(tiny_setup.base)), [r["prompt"] for r in rows],
                                [r["prompt_id"] for r in rows], num_samples=4, max_new_tokens=5, seed=1,
                                progress=False)
    assert [d["completions"] for d in direct] == [r["base_completions"] for r in rows]
    assert [r["policy_completions"] for r in rows] != [r["base_completions"] for r in rows]


def test_eval_zero_adapter_has_zero_kl(tiny_setup, tmp_path):
    # A LoRA with B = 0 is the base policy: log π − log π_ref is exactly 0 for every sample. Defaults come from
    # infalign_train.json: base model, judge, procedure bon and N = 1, 2, 4 (trained N = 2).
    report = _run_eval(tiny_setup, tiny_setup.zero, tmp_path / "ev0", "--no-plots")
    assert report["kl"] == pytest.approx(0.0, abs=1e-5)
    assert set(report["results"]) == {"bon"} and set(report["results"]["bon"]) == {"1", "2", "4"}
    assert report["model"] == str(tiny_setup.base) and report["reward_model"] == str(tiny_setup.rm)
    assert "plots" not in report and not list((tmp_path / "ev0").glob("*.png"))


def test_eval_long_prompts_skip_or_fail(tiny_setup, tmp_path, capsys):
    from offline_infalign.cli import main

    # The tiny LM has 128 positions: a 130-word prompt cannot fit with 5 new tokens.
    prompts = tmp_path / "long.jsonl"
    rows = [*PROMPTS, " ".join(["good"] * 130)]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    base = ["eval", "--policy", str(tiny_setup.zero), "--prompts", str(prompts), "--samples", "2", "--n", "2",
            "--max-new-tokens", "5", "--num-bootstrap", "20", "--device", "cpu", "--no-plots"]
    assert main([*base, "--out", str(tmp_path / "f")]) == 2
    assert "pass --on-long-prompt" in capsys.readouterr().err
    assert main([*base, "--on-long-prompt", "skip", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "report.json").read_text())["num_prompts"] == len(PROMPTS)


def test_completion_ids_drop_eos_only_when_cut_off():
    from tiny_models import tiny_tokenizer

    from offline_infalign.stages.evaluate import completion_ids

    tok = tiny_tokenizer()
    words = tok("good movie", add_special_tokens=False)["input_ids"]
    # Finished within the limit: the model drew EOS, so it is part of log π(y|x).
    assert completion_ids(tok, "good movie", max_new_tokens=3) == (words + [tok.eos_token_id], False)
    # Cut at the limit: EOS was never drawn; scoring it would measure a distribution that was not sampled.
    assert completion_ids(tok, "good movie", max_new_tokens=2) == (words, True)


def test_eval_cli_bad_input_is_one_line(tiny_setup, tmp_path, capsys):
    from offline_infalign.cli import main

    rc = main(["eval", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
