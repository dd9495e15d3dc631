"""core/checks.py: the one check of β and the one check of K, each with one wording, against hand-written values."""

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

