"""Several policies in one `infalign eval` (docs/math.md §8, §10): the base samples drawn once for all and kept in
the folder, reused or redrawn (with the reason) by a later eval, every policy on the same prompts, and the paired
differences recomputable from the written samples."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_evaluation import brute_force_win_rate

PROMPTS = ["tell me about the movie", "how was the food ?", "what is a good day", "why is the cat sad",
           "the dog ran home"]


def _adapter(root, name, base_dir, rm_dir, seed, **record):
    """A LoRA on lm_head with random B (seeded), so each adapter is its own policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tiny_models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    base = tiny_causal_lm(tok, seed=0)  # the saved base's weights (it seeds torch itself)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["lm_head"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    folder = root / name
    peft_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    info = {"config": {"model": str(base_dir), "loss": "listwise"}, "reward_model": str(rm_dir),
            "transform": "exp", "tilt": 5.0, "beta": 0.5, "loss": "listwise", "procedure": "bon", "n": 2, **record}
    (folder / "infalign_train.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    from tiny_models import save_tiny_lm, save_tiny_reward_model

    root = tmp_path_factory.mktemp("compare")
    base_dir = save_tiny_lm(root / "base", seed=0)
    rm_dir = save_tiny_reward_model(root / "rm", seed=1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    adapters = {name: _adapter(root, f"adapter_{name}", base_dir, rm_dir, seed)
                for seed, name in enumerate(("identity", "exp", "log"))}
    return SimpleNamespace(root=root, base=base_dir, rm=rm_dir, prompts=prompts, adapters=adapters)


@pytest.fixture
def counted(monkeypatch):
    """Every sampler call (its seed) and every judge call (its progress label)."""
    import offline_infalign.stages.evaluate as evaluate_stage  # where the stage looks the two names up

    calls = SimpleNamespace(seeds=[], judged=[])
    real_sample, real_score = evaluate_stage.sample_completions, evaluate_stage.score_in_chunks

    def sample(*args, **kwargs):
        calls.seeds.append(kwargs["seed"])
        return real_sample(*args, **kwargs)

    def score(scorer, prompts, completions, chunk=None, desc=None):
        calls.judged.append(desc)
        return real_score(scorer, prompts, completions, chunk, desc)

    monkeypatch.setattr(evaluate_stage, "sample_completions", sample)
    monkeypatch.setattr(evaluate_stage, "score_in_chunks", score)
    return calls


def _eval(setup, out, *extra, policies=("identity", "exp", "log")):
    from offline_infalign.cli import main

    argv = ["eval", "--prompts", str(setup.prompts), "--samples", "4", "--max-new-tokens", "5", "--n", "1,2,4",
            "--num-bootstrap", "200", "--device", "cpu", "--out", str(out), "--no-plots"]
    for name in policies:
        argv += ["--policy", f"{name}={setup.adapters[name]}"]
    assert main([*argv, *extra]) == 0
    return json.loads((out / "report.json").read_text())


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_three_policies_draw_the_base_samples_once(three, tmp_path, counted, capsys):
    out = tmp_path / "ev"
    report = _eval(three, out, "--baseline", "identity")
    # One sampler call per policy (seed 0, the same for each) and ONE for the base side (seed + 1).
    assert sorted(counted.seeds) == [0, 0, 0, 1]
    assert counted.judged.count("judge (base)") == 1
    assert set(report["policies"]) == {"identity", "exp", "log"} and report["baseline"] == "identity"
    assert set(report["comparisons"]) == {"exp", "log"} and report["base_samples"]["note"].startswith("drawn")

    # Every policy was judged on the same prompts against the same base samples: the ones in base_samples.jsonl.
    cached = _rows(out / "base_samples.jsonl")
    samples = {name: _rows(out / name / "samples.jsonl") for name in report["policies"]}
    for rows in samples.values():
        assert [r["prompt_id"] for r in rows] == [c["prompt_id"] for c in cached]
        assert [r["base_completion_ids"] for r in rows] == [c["completion_ids"] for c in cached]
        assert [r["base_rewards"] for r in rows] == [r["base_rewards"] for r in samples["identity"]]
    assert samples["exp"][0]["policy_completion_ids"] != samples["identity"][0]["policy_completion_ids"]

    # Each policy's table is its own measurement; the comparison is the paired difference of those per prompt.
    base = np.array([r["base_rewards"] for r in samples["identity"]])
    pol = {name: np.array([r["policy_rewards"] for r in rows]) for name, rows in samples.items()}
    for name, c in report["comparisons"].items():
        assert c["baseline"] == "identity"
        assert c["kl"] == {name: report["policies"][name]["kl"], "identity": report["policies"]["identity"]["kl"]}
        assert c["kl_matched"] == (abs(c["kl_difference"]) <= 0.03) and c["kl_tolerance"] == 0.03
        for n in (1, 2, 4):
            mine = report["policies"][name]["results"]["bon"][str(n)]["win_rate"]
            theirs = report["policies"]["identity"]["results"]["bon"][str(n)]["win_rate"]
            d = c["results"]["bon"][str(n)]
            assert d["difference"] == pytest.approx(mine - theirs, abs=1e-12)
            assert d["difference"] == pytest.approx(brute_force_win_rate(pol[name], base, n, "bon")
                                                    - brute_force_win_rate(pol["identity"], base, n, "bon"))
            assert d["ci_low"] <= d["difference"] <= d["ci_high"]
        assert c["standard"]["difference"] == pytest.approx(c["results"]["bon"]["1"]["difference"])
    printed = capsys.readouterr().out
    assert "paired differences against identity" in printed and "== log" in printed


def test_a_later_eval_reuses_the_samples_or_says_why_not(three, tmp_path, counted):
    out = tmp_path / "ev"
    first = _eval(three, out, policies=("identity", "exp"))
    assert sorted(counted.seeds) == [0, 0, 1] and first["baseline"] == "identity"  # the first policy by default
    counted.seeds.clear(), counted.judged.clear()

    # Another policy beside a kept one, same settings: only the new policy is sampled; no base judging.
    again = _eval(three, out, "--baseline", "log", policies=("exp", "log"))
    assert counted.seeds == [0] and "judge (base)" not in counted.judged
    assert again["base_samples"]["note"] == "reused" and set(again["comparisons"]) == {"exp"}
    assert (again["policies"]["exp"]["policy_samples"], again["policies"]["log"]["policy_samples"]) == (
        "reused", "drawn (none kept)")
    assert any(note.startswith("base samples reused") for note in again["notes"])
    old = _rows(out / "identity" / "samples.jsonl")
    assert [r["base_rewards"] for r in _rows(out / "log" / "samples.jsonl")] == [r["base_rewards"] for r in old]
    # The kept policy gives the same measurement as when it was drawn.
    assert again["policies"]["exp"]["kl"] == first["policies"]["exp"]["kl"]
    assert again["policies"]["exp"]["results"] == first["policies"]["exp"]["results"]
    counted.seeds.clear()

    # One policy alone reuses them too; its report is the one-policy report.
    single = _eval(three, out, policies=("log",))
    assert counted.seeds == [] and single["base_samples"]["note"] == "reused" and "kl" in single
    assert "policy samples reused" in single["notes"]

    # Another length limit: everything is redrawn, and the report says why.
    changed = _eval(three, out, "--max-new-tokens", "4", policies=("identity", "exp"))
    assert sorted(counted.seeds) == [0, 0, 1]
    assert changed["base_samples"]["note"] == "redrawn: max_new_tokens: 5 -> 4"
    assert changed["policies"]["exp"]["policy_samples"] == "redrawn: max_new_tokens: 5 -> 4"
    counted.seeds.clear()
    # Another seed too.
    assert _eval(three, out, "--seed", "3", "--max-new-tokens", "4", policies=("exp",))["base_samples"]["note"] == (
        "redrawn: seed: 0 -> 3")
    assert counted.seeds == [4, 3]
    # A damaged file is never trusted.
    (out / "base_samples.jsonl").write_text((out / "base_samples.jsonl").read_text().replace("[", "[ ", 1))
    damaged = _eval(three, out, "--seed", "3", "--max-new-tokens", "4", policies=("exp",))
    assert damaged["base_samples"]["note"].startswith("redrawn: base_samples.jsonl is missing or changed")


def test_a_changed_adapter_is_sampled_again(three, tmp_path, counted):
    root = tmp_path / "adapters"
    folder = _adapter(root, "adapter_x", three.base, three.rm, seed=11)
    setup = SimpleNamespace(**{**vars(three), "adapters": {"x": folder}})
    first = _eval(setup, tmp_path / "ev", policies=("x",))
    _adapter(root, "adapter_x", three.base, three.rm, seed=12)  # other weights in the same folder
    counted.seeds.clear()
    again = _eval(setup, tmp_path / "ev", policies=("x",))
    assert counted.seeds == [0] and again["policy_samples"] == "drawn (none kept)"
    assert again["kl"] != first["kl"] and again["base_samples"]["note"] == "reused"


def test_samples_kept_in_another_folder_serve_evaluations_in_several(three, tmp_path, counted):
    shared = tmp_path / "shared"
    one = _eval(three, tmp_path / "one", "--samples-cache", str(shared), policies=("identity",))
    two = _eval(three, tmp_path / "two", "--samples-cache", str(shared), policies=("exp",))
    assert counted.seeds == [1, 0, 0] and (shared / "base_samples.jsonl").is_file()
    assert not (tmp_path / "one" / "base_samples.jsonl").exists()
    assert (one["base_samples"], two["base_samples"]["note"]) == ({"folder": str(shared), "note":
                                                                  "drawn (none kept)"}, "reused")
    assert ([r["base_rewards"] for r in _rows(tmp_path / "one" / "samples.jsonl")]
            == [r["base_rewards"] for r in _rows(tmp_path / "two" / "samples.jsonl")])
    # Both kept policies, compared in a third folder, are not sampled again.
    counted.seeds.clear()
    both = _eval(three, tmp_path / "three", "--samples-cache", str(shared), policies=("identity", "exp"))
    assert counted.seeds == [] and both["policies"]["exp"]["kl"] == two["kl"]


def test_another_judge_rescores_the_same_base_samples(three, tmp_path, counted):
    from tiny_models import save_tiny_reward_model

    out = tmp_path / "ev"
    _eval(three, out, policies=("identity", "exp"))
    other = save_tiny_reward_model(tmp_path / "rm_other", seed=5)
    counted.seeds.clear(), counted.judged.clear()
    report = _eval(three, out, "--reward-model", str(other), policies=("identity", "exp"))
    assert counted.seeds == [] and counted.judged.count("judge (base)") == 1  # nothing sampled again
    assert report["base_samples"]["note"] == "reused" and report["reward_model"] == str(other)


@pytest.mark.parametrize("extra,needle", [
    (["--baseline", "nope"], "baseline 'nope' is not one of the policies (identity, exp)"),
    (["--transform", "identity"], "--transform and --beta set one policy's prediction"),
    (["--kl-tolerance", "-1"], "kl_tolerance must be a number >= 0"),
])
def test_bad_comparison_input_is_one_line(three, tmp_path, capsys, extra, needle):
    from offline_infalign.cli import main

    argv = ["eval", "--policy", f"identity={three.adapters['identity']}", "--policy",
            f"exp={three.adapters['exp']}", "--prompts", str(three.prompts), "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_policy_names(three, tmp_path, capsys):
    from offline_infalign.cli import main
    from offline_infalign.config import EvalConfig

    # Named by the folder by default; NAME=FOLDER names one; two of one name are refused.
    cfg = EvalConfig(policy=[str(three.adapters["identity"]), f"tilted={three.adapters['exp']}"])
    assert cfg.policies() == [("adapter_identity", str(three.adapters["identity"])),
                              ("tilted", str(three.adapters["exp"]))]
    assert cfg.baseline_name() == "adapter_identity"
    argv = ["eval", "--policy", f"a={three.adapters['identity']}", f"a={three.adapters['exp']}",
            "--prompts", str(three.prompts), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "two policies named 'a'" in capsys.readouterr().err


def test_policies_with_different_judges_or_prompts_are_refused(three, tmp_path, capsys):
    from offline_infalign.cli import main

    other = _adapter(three.root, "adapter_other_judge", three.base, "demo", 7)
    argv = ["eval", "--policy", f"identity={three.adapters['identity']}", "--policy", f"other={other}",
            "--prompts", str(three.prompts), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "name different judges" in capsys.readouterr().err
