"""core/transforms.py (docs/math.md §5): monotonicity, the normalized exp family, the parser and its errors."""

import math
import warnings

import numpy as np
import pytest

from offline_infalign.core.errors import InfalignError
from offline_infalign.core.transforms import TRANSFORM_NAMES, Transform, get_transform, parse_transform

U = np.concatenate([np.geomspace(1e-12, 0.5, 200), 1 - np.geomspace(1e-12, 0.5, 200)[::-1][1:]])

ALL = [Transform("identity"), Transform("log")] + [
    Transform("exp", t) for t in (-1000, -100, -10, -0.5, 1e-6, 0.5, 10, 100, 1000)
] + [Transform("power", p) for p in (0.5, 2.0)]


def test_registry_names():
    assert {"identity", "log", "exp", "power"} <= set(TRANSFORM_NAMES)


@pytest.mark.parametrize("t", ALL, ids=str)
def test_increasing_and_finite(t):
    y = t(U)
    # non-decreasing everywhere; flat steps only where float64 saturates (e^{−|t|u} underflows for |t| = 1000)
    assert np.all(np.isfinite(y)) and np.all(np.diff(y) >= 0)
    if t.tilt is None or abs(t.tilt) <= 30:
        u = np.linspace(0.001, 0.999, 999)
        assert np.all(np.diff(t(u)) > 0)  # strictly where float64 can resolve it
    else:  # strictly inside the window of width 30/|t| where the exponential does not underflow
        w = 30.0 / abs(t.tilt)
        u = np.linspace(1 - w, 1 - 1e-3 * w, 999) if t.tilt > 0 else np.linspace(1e-3 * w, w, 999)
        assert np.all(np.diff(t(u)) > 0)


@pytest.mark.parametrize("tilt", [-1000.0, -30.0, -1.0, 1e-6, 1.0, 31.0, 1000.0])
def test_exp_normalized(tilt):
    t = Transform("exp", tilt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings even at |t| = 1000
        y = t(np.array([0.0, 0.5, 1.0]))
    assert y[0] == pytest.approx(0.0, abs=1e-12) and y[2] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= y[1] <= 1.0


def test_exp_hand_values():
    # t = 2, u = ½: (e − 1)/(e² − 1) = 1/(e + 1)
    assert Transform("exp", 2.0)(0.5) == pytest.approx(1 / (math.e + 1), rel=1e-12)
    # t = −2, u = ½: (e^{−1} − 1)/(e^{−2} − 1) = 1/(e^{−1} + 1) = e/(e + 1)
    assert Transform("exp", -2.0)(0.5) == pytest.approx(math.e / (math.e + 1), rel=1e-12)
    # t = 40 crosses the large-t branch: (e^{20} − 1)/(e^{40} − 1) = 1/(e^{20} + 1)
    assert Transform("exp", 40.0)(0.5) == pytest.approx(1 / (math.exp(20) + 1), rel=1e-10)
    # small t tends to the identity
    assert np.allclose(Transform("exp", 1e-4)(U), U, atol=1e-4)


def test_log_guard_at_zero():
    y = Transform("log")(np.array([0.0, 1e-300, 0.5]))
    assert np.all(np.isfinite(y)) and y[2] == pytest.approx(math.log(0.5))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("identity", Transform("identity")),
        ("log", Transform("log")),
        ("exp:tilt=2.5", Transform("exp", 2.5)),
        ("exp:2.5", Transform("exp", 2.5)),
        ("exp:tilt=-10", Transform("exp", -10.0)),
        ("power:tilt=0.5", Transform("power", 0.5)),
    ],
)
def test_parse(text, expected):
    t = parse_transform(text)
    assert t == expected
    assert parse_transform(str(t)) == t  # str round-trips
    assert get_transform(expected.name, expected.tilt) == t


@pytest.mark.parametrize(
    "text,match",
    [
        ("bogus", "unknown transform 'bogus'; allowed: identity, log, exp"),
        ("exp", "needs a tilt"),
        ("exp:tilt=0", "t=0"),
        ("exp:tilt=abc", "'abc' is not a number"),
        ("exp:scale=2", "'scale'"),
        ("identity:tilt=1", "takes no tilt"),
        ("power:tilt=-1", "t > 0"),
        ("exp:tilt=inf", "finite"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(InfalignError, match=match):
        parse_transform(text)
