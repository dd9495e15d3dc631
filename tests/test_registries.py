"""A new variant of a concept is one file (or one function) plus one registry line, and nothing else: the CLI's
`--help`, its choices and its error messages read the registries.

Each test copies the package to a temporary folder, makes there exactly the change docs/design.md and the
README's "Where things go" table describe (one registry line, plus the variant's own file for a dataset kind),
and runs `infalign ... --help` on that copy in a subprocess: the new name must show up."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A pristine copy of the package's code (no demo model weights, no caches), copied again per test."""
    base = tmp_path_factory.mktemp("pristine")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    for name in ("offline_infalign", "data_builders"):
        shutil.copytree(ROOT / name, base / name, ignore=ignore)
    return base


@pytest.fixture
def copy(package_copy, tmp_path) -> Path:
    out = tmp_path / "pkg"
    shutil.copytree(package_copy, out)
    return out


def _edit(path: Path, anchor: str, text: str, after: bool = True) -> None:
    """Insert `text` right after (or before) the first line that starts with `anchor`."""
    lines = path.read_text().split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(anchor))
    lines.insert(at + 1 if after else at, text)
    path.write_text("\n".join(lines))


def _infalign(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "offline_infalign", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=copy)


def _shown(res: subprocess.CompletedProcess) -> str:
    return " ".join((res.stdout + res.stderr).split())  # argparse wraps lines


def test_a_registered_transform_shows_in_help_and_errors(copy):
    _edit(copy / "offline_infalign/core/transforms.py", "TRANSFORM_NAMES:",
          'register("toy", _identity, needs_tilt=False, doc="a toy")\n', after=False)
    for command in ("prepare", "tradeoff"):
        assert re.search(r"transform.*\btoy\b", _shown(_infalign(copy, command, "--help"))), command
    res = _infalign(copy, "tradeoff", "--transform", "nope", "--beta", "1")
    assert res.returncode == 2 and "toy" in res.stderr, res.stderr
    assert _infalign(copy, "tradeoff", "--transform", "toy", "--beta", "1").returncode == 0


def test_a_registered_loss_shows_in_help_and_choices(copy):
    _edit(copy / "offline_infalign/core/losses.py", '        LossSpec("dpo", dpo,',
          '        LossSpec("toy_loss", dpo, "pairs", tilted=False, needs_margin=False, help="a toy"),')
    assert "toy_loss" in _shown(_infalign(copy, "train", "--help"))
    res = _infalign(copy, "train", "--loss", "nope")
    assert res.returncode == 2 and "toy_loss" in res.stderr, res.stderr


def test_a_registered_procedure_shows_in_help_and_errors(copy):
    path = copy / "offline_infalign/core/procedures.py"
    bon = re.search(r'register_procedure\(Procedure\("bon".*?\)\)\n', path.read_text(), re.S).group(0)
    _edit(path, "PROCEDURE_NAMES:", bon.replace('"bon", "best-of-N"', '"toy", "toy-of-N"'), after=False)
    for command in ("tradeoff", "prepare", "eval", "demo"):
        assert re.search(r"\btoy\b", _shown(_infalign(copy, command, "--help"))), command
    res = _infalign(copy, "tradeoff", "--procedure", "nope", "--beta", "1")
    assert res.returncode == 2 and "toy" in res.stderr, res.stderr
    assert _infalign(copy, "tradeoff", "--procedure", "toy", "--beta", "1").returncode == 0


def test_a_registered_kind_shows_in_help_and_choices(copy):
    (copy / "offline_infalign/kinds/toy.py").write_text(
        "from .bon import BonKind\n\n\nclass ToyKind(BonKind):\n    name = 'toy'\n")
    _edit(copy / "offline_infalign/kinds/__init__.py", '    "bon": "bon:BonKind",', '    "toy": "toy:ToyKind",')
    assert re.search(r"kind.*\btoy\b", _shown(_infalign(copy, "prepare", "--help")))
    assert "toy" in _shown(_infalign(copy, "--help"))  # prepare's one-line summary names the kinds
    res = _infalign(copy, "prepare", "--kind", "nope")
    assert res.returncode == 2 and "toy" in res.stderr, res.stderr


def test_a_registered_scorer_shows_in_help(copy):
    _edit(copy / "offline_infalign/models/scorers.py", '    "demo": BuiltinScorer(',
          '    "toy": BuiltinScorer("offline_infalign.demo.assets:demo_reward"),')
    for command in ("score", "build", "eval"):
        assert "'toy'" in _shown(_infalign(copy, command, "--help")), command


def test_a_registered_format_shows_in_help_and_choices(copy):
    # A toy format on QRPO's module: its label reaches import's and export's one-line summaries, its name --format.
    _edit(copy / "offline_infalign/integrations/__init__.py", '    "qrpo": Format(',
          '    "toy": Format("offline_infalign.integrations.qrpo", label="Toy"),')
    summary = _shown(_infalign(copy, "--help"))
    assert "import a reference dataset (QRPO's or Toy's layouts)" in summary, summary
    assert "write a scored artifact in QRPO's or Toy's layout (qrpo: original or verl; toy: original or verl)" \
        in summary, summary
    for command in ("import", "export"):
        assert re.search(r"format.*\btoy\b", _shown(_infalign(copy, command, "--help"))), command
