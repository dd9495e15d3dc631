"""core/checks.py: the one check of β and the one check of K, each with one wording, against hand-written values."""

import re

import numpy as np
import pytest

from offline_infalign.core.checks import check_beta, check_num_samples
from offline_infalign.core.errors import InfalignError


@pytest.mark.parametrize("bad, shown", [
    (0, "0"), (0.0, "0.0"), (-0.5, "-0.5"), (-1, "-1"), (float("nan"), "nan"), (float("inf"), "inf"),
    (float("-inf"), "-inf"), (True, "True"), (False, "False"), (None, "None"), ("0.5", "'0.5'"), ("x", "'x'"),
    ([0.5], "[0.5]"), (np.float64("nan"), "np.float64(nan)"), (np.bool_(True), "np.True_"),
])
def test_check_beta_refuses_with_one_wording(bad, shown):
    with pytest.raises(InfalignError) as exc:
        check_beta(bad)
    assert str(exc.value) == f"beta must be a finite number > 0, got {shown}"
    with pytest.raises(InfalignError) as exc:
        check_beta(bad, "train")
    assert str(exc.value) == f"train: beta must be a finite number > 0, got {shown}"


@pytest.mark.parametrize("good, value", [(0.5, 0.5), (2, 2.0), (1e-300, 1e-300), (np.float32(0.25), 0.25),
                                         (np.int64(3), 3.0)])
def test_check_beta_returns_a_float(good, value):
    out = check_beta(good, "prepare")
    assert out == value and type(out) is float


@pytest.mark.parametrize("bad, shown", [
    (1, "1"), (0, "0"), (-2, "-2"), (2.0, "2.0"), (True, "True"), (None, "None"), ("4", "'4'"),
    (float("nan"), "nan"), (np.int64(1), "np.int64(1)"),
])
def test_check_num_samples_refuses_with_one_wording(bad, shown):
    with pytest.raises(InfalignError) as exc:
        check_num_samples(bad)
    assert str(exc.value) == f"num_samples K must be an integer >= 2 (completions per prompt), got {shown}"
    with pytest.raises(InfalignError) as exc:
        check_num_samples(bad, "listwise group 'p1'", what="completions in a group")
    assert str(exc.value) == (f"listwise group 'p1': num_samples K must be an integer >= 2 (completions in a "
                              f"group), got {shown}")


@pytest.mark.parametrize("good", [2, 64, np.int32(2), np.int64(1 << 40)])
def test_check_num_samples_returns_an_int(good):
    out = check_num_samples(good)
    assert out == int(good) and type(out) is int


def test_no_other_beta_or_k_wording_in_the_package():
    # Every check of β and K goes through these two functions: no hand-written message is left beside them.
    import pathlib

    import offline_infalign

    root = pathlib.Path(offline_infalign.__file__).parent
    pattern = re.compile(r"beta must be (?!given)|K >= 2|needs at least 2|num_samples.{0,8}must be an integer >= 2")
    found = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py")) if p.name != "checks.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []


def _configs():
    from offline_infalign.config.data import BuildConfig, PrepareConfig, SampleConfig
    from offline_infalign.config.demo import DemoConfig
    from offline_infalign.config.evaluate import EvalConfig
    from offline_infalign.config.tradeoff import TradeoffConfig
    from offline_infalign.config.train import TrainConfig

    build = dict(prompts="p", model="m", reward_model="r", out="o", transform="identity")
    beta = "beta must be a finite number > 0, got"
    k = "num_samples K must be an integer >= 2 (completions per prompt), got"
    return [
        (PrepareConfig, dict(input="i", out="o", transform="identity", beta=0.0), f"prepare: {beta} 0.0"),
        (BuildConfig, dict(build, beta=-1.0), f"prepare: {beta} -1.0"),
        (TrainConfig, dict(dataset="d", model="m", loss="dpo", out="o", beta=float("nan")), f"train: {beta} nan"),
        (EvalConfig, dict(policy=["a"], out="o", beta=0.0), f"eval: {beta} 0.0"),
        (TradeoffConfig, dict(transform="identity", beta=True), f"tradeoff: {beta} True"),
        (SampleConfig, dict(prompts="p", model="m", out="o", num_samples=1), f"sample: {k} 1"),
        (BuildConfig, dict(build, beta=0.5, num_samples=True), f"sample: {k} True"),
        (TradeoffConfig, dict(transform="identity", beta=0.5, num_samples=1), f"tradeoff: {k} 1"),
        (DemoConfig, dict(out="o", num_samples=0), f"demo: {k} 0"),
    ]


@pytest.mark.parametrize("i", range(9))
def test_each_config_checks_beta_and_k_with_the_one_wording(i):
    cls, kwargs, message = _configs()[i]
    with pytest.raises(InfalignError) as exc:
        cls(**kwargs)
    assert str(exc.value) == message
