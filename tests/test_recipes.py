"""Recipes: every YAML loads strictly into its stage's config, stages chain, run.sh lines parse, `--help`
works for every subcommand, and the smoke recipe runs end to end on tiny models."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from offline_infalign.cli import COMMANDS, build_parser, main
from offline_infalign.config import (
    BuildConfig,
    EvalConfig,
    PrepareConfig,
    TrainConfig,
    load_config,
    overrides_from_args,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
STAGES = {"build.yaml": BuildConfig, "prepare.yaml": PrepareConfig, "train.yaml": TrainConfig, "eval.yaml": EvalConfig}
RECIPE_NAMES = sorted(p.name for p in RECIPES.iterdir() if p.is_dir())
YAMLS = sorted(RECIPES.glob("*/*.yaml"))


def test_recipes_present():
    assert {"hh_helpful_bon", "hh_harmless_won", "tldr_bon", "smoke"} <= set(RECIPE_NAMES)
    for name in RECIPE_NAMES:
        for f in [*STAGES, "run.sh", *(["README.md"] if name != "smoke" else [])]:
            assert (RECIPES / name / f).is_file(), f"recipes/{name}/{f} missing"


@pytest.mark.parametrize("path", YAMLS, ids=[f"{p.parent.name}/{p.name}" for p in YAMLS])
def test_every_recipe_yaml_loads_strictly(path):
    # Strict: an unknown or misspelled key is an error, so a YAML key that is not a dataclass field fails here.
    assert path.name in STAGES, f"{path}: no config class for a file named {path.name}"
    cfg = load_config(STAGES[path.name], path)
    assert isinstance(cfg, STAGES[path.name])


def _load(name):
    return {f: load_config(cls, RECIPES / name / f) for f, cls in STAGES.items()}


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_stages_chain(name):
    c = _load(name)
    build, prepare, train, ev = c["build.yaml"], c["prepare.yaml"], c["train.yaml"], c["eval.yaml"]
    paths = build.paths()
    assert prepare.input == paths["scored"]
    assert train.dataset == paths["prepared"]
    assert train.model == build.model
    assert ev.policy == [train.out]
    # The held-out prompts are the same in both prepared datasets only with the same split fraction.
    assert prepare.test_fraction == build.test_fraction
    assert prepare.procedure == build.procedure and prepare.n == build.n
    assert ev.procedure == [build.procedure]
    assert build.n in ev.n and max(ev.n) <= ev.samples
    assert ev.max_new_tokens == build.max_new_tokens  # measure the policy with the length it was trained on
    if build.procedure == "won":
        assert build.transform == "auto" or (build.tilt or 0) < 0


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_run_script_commands_parse(name):
    """Every `$INFALIGN cmd ...` line of run.sh names a real subcommand whose flags parse and whose config loads."""
    script = (RECIPES / name / "run.sh").read_text().replace("\\\n", " ")  # continued lines joined
    assert subprocess.run(["bash", "-n", str(RECIPES / name / "run.sh")]).returncode == 0
    variables = dict(re.findall(r"^(R|OUT)=(\S+)$", script, flags=re.M))
    lines = [line.split("#")[0] for line in script.splitlines() if line.startswith("$INFALIGN ")]
    assert [shlex.split(line)[1] for line in lines][:4] == ["build", "prepare", "train", "train"]
    parser = build_parser()
    classes = {"build": BuildConfig, "prepare": PrepareConfig, "train": TrainConfig, "eval": EvalConfig}
    build = load_config(BuildConfig, RECIPES / name / "build.yaml")
    for line in lines:
        for var, value in variables.items():
            line = line.replace(f'"${var}', f'"{value}').replace(f"${var}", value)
        argv = shlex.split(line)[1:]
        args = parser.parse_args(argv)
        config = None if args.config is None else ROOT / args.config  # a line may give every key as a flag
        assert config is None or config.is_file(), f"{name}/run.sh: {args.config} missing"
        cfg = load_config(classes[argv[0]], config, overrides_from_args(args, classes[argv[0]]))
        if argv[0] == "prepare":  # every prepared dataset holds out the same prompts as build's
            assert cfg.test_fraction == build.test_fraction and cfg.input == build.paths()["scored"]


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_dpo_baseline_trains_on_best_worst_pairs(name):
    """docs/math.md §6: the DPO/IPO baselines train on (best, worst) raw-reward pairs, never on all pairs."""
    script = (RECIPES / name / "run.sh").read_text().replace("\\\n", " ")  # continued lines joined
    variables = dict(re.findall(r"^(R|OUT)=(\S+)$", script, flags=re.M))
    parser = build_parser()
    prepared = {}
    for line in (x.split("#")[0] for x in script.splitlines() if x.startswith("$INFALIGN ")):
        for var, value in variables.items():
            line = line.replace(f'"${var}', f'"{value}').replace(f"${var}", value)
        argv = shlex.split(line)[1:]
        args = parser.parse_args(argv)
        cls = {"prepare": PrepareConfig, "train": TrainConfig}.get(argv[0])
        if cls is None:
            continue
        cfg = load_config(cls, None if args.config is None else ROOT / args.config, overrides_from_args(args, cls))
        if cls is PrepareConfig:
            prepared[cfg.out] = cfg
        elif cfg.loss in ("dpo", "ipo"):
            assert prepared[cfg.dataset].pairs == "best_worst", f"{name}: {cfg.loss} on {cfg.dataset}"
            break
    else:
        pytest.fail(f"{name}/run.sh trains no dpo/ipo baseline")


def test_help_of_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert f"usage: infalign {name}" in capsys.readouterr().out
    # The installed entry point, in a fresh interpreter: --help must not need heavy imports to succeed.
    out = subprocess.run([sys.executable, "-m", "offline_infalign.cli", "eval", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--reward-model" in out.stdout


def test_smoke_recipe_end_to_end(tmp_path, capsys):
    from tiny_models import save_tiny_lm, save_tiny_reward_model

    base, rm, run = save_tiny_lm(tmp_path / "base"), save_tiny_reward_model(tmp_path / "rm"), tmp_path / "run"
    r = RECIPES / "smoke"
    # Every path is overridden (the YAMLs' paths are relative to the repository root, pytest may run elsewhere).
    assert main(["build", "--config", str(r / "build.yaml"), "--model", str(base), "--reward-model", str(rm),
                 "--prompts", str(r / "prompts.jsonl"), "--out", str(run)]) == 0
    assert main(["prepare", "--config", str(r / "prepare.yaml"), "--input", str(run / "scored"),
                 "--out", str(run / "prepared_identity")]) == 0
    assert main(["train", str(r / "train.yaml"), "--dataset", str(run / "prepared"), "--model", str(base),
                 "--out", str(run / "adapter")]) == 0
    assert main(["train", str(r / "train.yaml"), "--dataset", str(run / "prepared_identity"), "--model", str(base),
                 "--out", str(run / "adapter_identity")]) == 0
    evaluate = ["eval", "--config", str(r / "eval.yaml"), "--samples-cache", str(run / "eval_cache")]
    assert main([*evaluate, "--policy", str(run / "adapter"), "--out", str(run / "eval")]) == 0
    # run.sh's DPO baseline: best_worst pairs, one per prompt whose rewards are not all tied.
    assert main(["prepare", "--input", str(run / "scored"), "--out", str(run / "prepared_dpo"), "--kind", "pairs",
                 "--pairs", "best_worst", "--transform", "identity", "--beta", "0.1", "--test-fraction", "0.25"]) == 0
    assert main(["train", str(r / "train.yaml"), "--dataset", str(run / "prepared_dpo"), "--model", str(base),
                 "--loss", "dpo", "--out", str(run / "adapter_dpo")]) == 0
    dpo = json.loads((run / "adapter_dpo" / "infalign_train.json").read_text())
    assert dpo["loss"] == "dpo" and dpo["beta"] == 0.1 and dpo["dataset_manifest"]["pairs"] == "best_worst"
    assert sum(dpo["dataset_manifest"]["num_rows"].values()) + dpo["dataset_manifest"]["skipped_tied_prompts"] == 16
    assert "bon N=4" in capsys.readouterr().out  # the evaluation's table
    # run.sh's paired comparison: the three arms against the identity baseline, the cached base samples reused.
    assert main([*evaluate, "--policy", f"exp={run / 'adapter'}", "--policy", f"identity={run / 'adapter_identity'}",
                 "--policy", f"dpo={run / 'adapter_dpo'}", "--baseline", "identity", "--out", str(run / "compare")]) == 0
    assert f"base samples reused ({run / 'eval_cache'})" in capsys.readouterr().out
    compared = json.loads((run / "compare" / "report.json").read_text())
    assert set(compared["policies"]) == {"exp", "identity", "dpo"} and compared["baseline"] == "identity"
    assert set(compared["comparisons"]) == {"exp", "dpo"}
    for c in compared["comparisons"].values():
        assert c["baseline"] == "identity" and set(c["results"]["bon"]) == {"1", "2", "4"}
        assert c["kl_matched"] == (abs(c["kl_difference"]) <= c["kl_tolerance"])

    report = json.loads((run / "eval" / "report.json").read_text())
    info = json.loads((run / "adapter" / "infalign_train.json").read_text())
    # Defaults flowed from the adapter: base model, judge, held-out prompts, the auto-chosen exp tilt and beta.
    assert report["model"] == str(base) and report["reward_model"] == str(rm)
    assert report["transform"].startswith("exp:tilt=") and info["tilt"] > 0
    assert report["beta"] == pytest.approx(info["beta"])
    assert report["predicted_kl"] == pytest.approx(0.3, abs=1e-3)  # build.yaml's KL budget
    assert set(report["results"]["bon"]) == {"1", "2", "4"}
    for e in report["results"]["bon"].values():
        assert 0.0 <= e["ci_low"] <= e["win_rate"] <= e["ci_high"] <= 1.0 and e["predicted"] is not None
    # The evaluation prompts are the prepared dataset's test split, never its training prompts.
    from offline_infalign.artifacts.storage import load_artifact

    data, _ = load_artifact(run / "prepared")
    eval_ids = {json.loads(line)["prompt_id"] for line in (run / "eval" / "samples.jsonl").read_text().splitlines()}
    assert eval_ids and eval_ids <= set(data["test"]["prompt_id"])
    assert not eval_ids & set(data["train"]["prompt_id"])
