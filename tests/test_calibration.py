"""core/calibration.py (docs/math.md §2) against hand values and its defining properties."""

import numpy as np
import pytest
from scipy.stats import kstest

from offline_infalign.core.calibration import calibrate, calibrate_against
from offline_infalign.core.errors import InfalignError


def test_hand_values_with_ties():
    # [3, 1, 3, 2]: for 3, 2 smaller + ½·2 equal (itself included) → 3/4; for 1, ½·1 → 1/8; for 2, 1 + ½ → 3/8
    assert calibrate([3.0, 1.0, 3.0, 2.0]) == pytest.approx([0.75, 0.125, 0.75, 0.375])
    assert calibrate([5.0, 5.0, 5.0]) == pytest.approx([0.5, 0.5, 0.5])
    # K = 2 distinct: 1/4 and 3/4 (the range [1/(2K), 1 − 1/(2K)])
    assert np.allclose(calibrate([[10.0, -10.0]]), [[0.75, 0.25]])


def test_matches_definition_on_random_ties():
    rng = np.random.default_rng(0)
    r = rng.integers(0, 5, size=(50, 9)).astype(float)  # many ties
    c = calibrate(r)
    k = r.shape[1]
    slow = np.array([[((row < x).sum() + 0.5 * (row == x).sum()) / k for x in row] for row in r])
    assert np.allclose(c, slow, atol=1e-15)
    assert np.allclose(c.mean(axis=1), 0.5)


def test_blocked_path_matches_broadcast_definition(monkeypatch):
    # calibrate ranks in blocks of rows; force several (uneven) blocks and compare with the definition computed
    # by broadcasting (independent of rankdata)
    import offline_infalign.core.calibration as cal

    monkeypatch.setattr(cal, "_BLOCK_VALUES", 7 * 6)
    rng = np.random.default_rng(5)
    r = rng.integers(0, 4, size=(3, 10, 6)).astype(float)
    c = cal.calibrate(r)
    less = (r[..., None, :] < r[..., :, None]).sum(-1)
    equal = (r[..., None, :] == r[..., :, None]).sum(-1)
    assert np.allclose(c, (less + 0.5 * equal) / 6, atol=1e-15)


def test_invariant_to_increasing_maps():
    rng = np.random.default_rng(1)
    r = np.round(rng.normal(size=(20, 16)), 1)  # with ties
    c = calibrate(r)
    for g in (lambda x: 3 * x + 7, np.exp, lambda x: x**3, np.arctan):
        assert np.array_equal(calibrate(g(r)), c)
    # a per-prompt offset and scale (what a reward model adds per prompt) changes nothing
    assert np.array_equal(calibrate(r * rng.uniform(0.5, 2, size=(20, 1)) + rng.normal(size=(20, 1))), c)


def test_rows_independent_and_batch_shapes():
    rng = np.random.default_rng(2)
    r = rng.normal(size=(6, 8))
    c = calibrate(r)
    for i in range(6):
        assert np.array_equal(c[i], calibrate(r[i]))
    perm = rng.permutation(6)
    assert np.array_equal(calibrate(r[perm]), c[perm])
    assert np.array_equal(calibrate(r.reshape(2, 3, 8)), c.reshape(2, 3, 8))


def test_continuous_samples_are_uniform():
    rng = np.random.default_rng(3)
    k = 64
    c = calibrate(rng.standard_t(3, size=(200, k)))
    # no ties: each row is a permutation of the mid-points (i + ½)/K, i.e. exactly uniform on the grid
    assert np.array_equal(np.sort(c, axis=1), np.broadcast_to((np.arange(k) + 0.5) / k, c.shape))
    # fresh samples from the same law, calibrated against 1000 reference samples, look Uniform(0, 1)
    ref = rng.standard_t(3, size=(1, 1000))
    new = rng.standard_t(3, size=(1, 2000))
    u = calibrate_against(new, ref)[0]
    assert kstest(u, "uniform").pvalue > 0.01


def test_calibrate_against_hand_values_and_clipping():
    ref = [1.0, 2.0, 2.0, 4.0]  # K = 4, range [1/8, 7/8]
    # 2 → (1 + ½·2)/4 = 1/2;  3 → 3/4;  0 → 0 clipped to 1/8;  5 → 1 clipped to 7/8;  1 → (0 + ½)/4 = 1/8
    got = calibrate_against([2.0, 3.0, 0.0, 5.0, 1.0], ref)
    assert got == pytest.approx([0.5, 0.75, 0.125, 0.875, 0.125])
    # batched: rows use their own references
    got = calibrate_against([[2.0], [2.0]], [[1.0, 3.0], [0.0, 1.0]])
    assert np.allclose(got, [[0.5], [0.75]])
    # a sample's own value against its own set gives the in-sample calibration
    r = np.array([[3.0, 1.0, 3.0, 2.0]])
    assert np.allclose(calibrate_against(r, r), calibrate(r))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: calibrate([1.0, np.nan, 2.0]), "non-finite"),
        (lambda: calibrate([[1.0, 2.0], [np.inf, 0.0]]), r"index \(1, 0\)"),
        (lambda: calibrate([[1.0], [2.0]]),
         r"^num_samples K must be an integer >= 2 \(rewards per prompt: the last axis\), got 1$"),
        (lambda: calibrate(3.0), "scalar"),
        (lambda: calibrate(["a", "b"]), "numeric"),
        (lambda: calibrate_against([1.0], [2.0]),
         r"^num_samples K must be an integer >= 2 \(reference rewards per prompt: the last axis\), got 1$"),
        (lambda: calibrate_against([[1.0]], [[2.0, 3.0], [1.0, 1.0]]), "leading shape"),
        (lambda: calibrate_against([np.nan], [2.0, 3.0]), "non-finite"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(InfalignError, match=match):
        call()
