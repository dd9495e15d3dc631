"""The command configs and parsers: every `--help` renders, choices come from the registries, `build` repeats its
stages' fields, and `infalign --help` / `infalign tradeoff --help` do not import torch."""

import dataclasses
import subprocess
import sys

import pytest

from offline_infalign.cli import COMMANDS, build_parser, main
from offline_infalign.commands import eval as eval_cmd
from offline_infalign.commands._common import served
from offline_infalign.config import (
    BuildConfig,
    DemoConfig,
    EvalConfig,
    PrepareConfig,
    SampleConfig,
    ScoreConfig,
    TradeoffConfig,
    TrainConfig,
)
from offline_infalign.core.errors import InfalignError
from offline_infalign.core.losses import LOSS_NAMES, LOSSES
from offline_infalign.core.procedures import PROCEDURE_NAMES, PROCEDURES, get_procedure
from offline_infalign.kinds import KIND_NAMES


def _field(cls, name):
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _choices(command, dest):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    sub.format_help()  # a command's flags are added when it is first used
    return next(a for a in sub._actions if a.dest == dest).choices


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_renders(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: infalign {name}") and "--config" in out


def test_choices_come_from_the_registries():
    assert _field(PrepareConfig, "kind").metadata["choices"] == list(KIND_NAMES)
    for cls in (PrepareConfig, DemoConfig, BuildConfig):
        assert _field(cls, "procedure").metadata["choices"] == list(PROCEDURE_NAMES)
    assert sorted(_field(TrainConfig, "loss").metadata["choices"]) == sorted(LOSS_NAMES)
    assert _choices("prepare", "kind") == list(KIND_NAMES)
    assert _choices("demo", "procedure") == list(PROCEDURE_NAMES)
    assert sorted(_choices("train", "loss")) == sorted(LOSS_NAMES)
    # each loss is listed in the help beside its dataset kind
    help_text = _field(TrainConfig, "loss").metadata["help"]
    for kind in {spec.kind for spec in LOSSES.values()}:
        names = ", ".join(n for n, s in LOSSES.items() if s.kind == kind)
        assert f"{names} <- {kind}" in help_text


def test_bad_choices_name_the_registry():
    with pytest.raises(InfalignError, match="procedure must be one of " + ", ".join(PROCEDURE_NAMES)):
        TradeoffConfig(procedure="best", beta=0.1)
    with pytest.raises(InfalignError, match="allowed: " + ", ".join(KIND_NAMES)):
        PrepareConfig(input="i", out="o", kind="triples", transform="identity", beta=0.1)
    with pytest.raises(InfalignError, match="unknown loss 'hinge'"):
        TrainConfig(dataset="d", model="m", loss="hinge", out="o")
    with pytest.raises(InfalignError, match="procedure must be one of"):
        TradeoffConfig(procedure=["bon"], beta=0.1)  # a YAML list is a wrong value, not a crash


def test_a_registered_procedure_is_allowed_everywhere(monkeypatch):
    toy = dataclasses.replace(get_procedure("bon"), name="toy", label="toy-of-N")
    monkeypatch.setitem(PROCEDURES, "toy", toy)
    assert TradeoffConfig(procedure="toy", n=3, beta=0.5).procedure == "toy"
    assert EvalConfig(policy="p", procedure=["bon", "toy"]).procedure == ["bon", "toy"]
    assert eval_cmd._procedure_list("bon,toy") == ["bon", "toy"]
    assert served("toy", 3) == "toy-of-3"


def test_served_labels():
    assert served("bon", 4) == "best-of-4" and served("won", 16) == "worst-of-16"


def test_build_repeats_its_stages_fields():
    """BuildConfig's help text is its stages' (written once); only out and the prepare defaults differ."""
    stages = (SampleConfig, ScoreConfig, PrepareConfig)
    for f in dataclasses.fields(BuildConfig):
        if f.name == "out":
            continue
        if f.name == "score_batch_size":
            source = _field(ScoreConfig, "batch_size")
        else:
            source = next(_field(c, f.name) for c in stages if f.name in {g.name for g in dataclasses.fields(c)})
        assert f.metadata == source.metadata, f.name
    defaults = {f.name: f.default for f in dataclasses.fields(BuildConfig)}
    assert (defaults["transform"], defaults["procedure"], defaults["n"], defaults["kl"]) == ("auto", "bon", 4, 0.3)
    cfg = BuildConfig(prompts="demo", model="m", out="run", reward_model="demo", score_batch_size=3, shard="1/2")
    assert cfg.score_config().batch_size == 3 and cfg.score_config().shard is None
    assert cfg.sample_config().out.endswith("shard-1-of-2/samples")


def test_every_help_is_torch_free():
    """`infalign --help` and every `infalign COMMAND --help` print without importing torch, transformers or
    datasets (1.3-1.5 s of imports for a help text). One process runs them one after another and checks after
    each, so the first command that imports one of them is the one named."""
    from offline_infalign.cli import COMMANDS

    code = ("import sys, contextlib, io\n"
            "from offline_infalign.cli import main\n"
            f"for argv in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as text:\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "    assert 'usage: infalign' in text.getvalue(), argv\n"
            "    heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
            "    print(argv[0], heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(COMMANDS) + 1
    assert all(line.endswith(" []") for line in lines), lines
