"""LatencyStats and paired ratios against distributions whose statistics are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.errors import ConfigError
from compress.runtime import LatencyStats, paired_ratio

# Standard normal quantiles (tables), independent of the code under test.
Z90 = 1.2815515655446004
Z99 = 2.3263478740408408


def test_lognormal_delays_give_the_analytic_median_and_percentiles():
    mu, sigma = math.log(0.010), 0.25  # median 10 ms, a right-skewed tail like real latencies
    samples = np.random.default_rng(1).lognormal(mu, sigma, size=200_000)
    s = LatencyStats.from_seconds(samples)
    assert s.runs == 200_000
    assert s.median == pytest.approx(math.exp(mu), rel=0.01)
    assert s.p90 == pytest.approx(math.exp(mu + sigma * Z90), rel=0.01)
    assert s.p99 == pytest.approx(math.exp(mu + sigma * Z99), rel=0.02)
    mean = math.exp(mu + sigma**2 / 2)
    assert s.mean == pytest.approx(mean, rel=0.01)
    assert s.std == pytest.approx(mean * math.sqrt(math.exp(sigma**2) - 1), rel=0.02)
    assert s.min == samples.min()
    assert s.throughput == pytest.approx(1 / mean, rel=0.01)


def test_small_exact_sample_uses_linear_interpolation():
    # 1..100 ms: median 50.5 ms, p90 = 1 + 0.9 * 99 = 90.1 ms, p99 = 99.01 ms (linear interpolation).
    s = LatencyStats.from_seconds([i / 1000 for i in range(1, 101)], batch=4)
    assert s.median == pytest.approx(0.0505)
    assert s.p90 == pytest.approx(0.0901)
    assert s.p99 == pytest.approx(0.09901)
    assert s.min == pytest.approx(0.001)
    assert s.throughput == pytest.approx(4 / 0.0505)
    assert s.to_ms_dict()["median"] == pytest.approx(50.5)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [0.1, -0.2], [float("inf")]])
def test_bad_samples_raise_config_error(bad):
    with pytest.raises(ConfigError):
        LatencyStats.from_seconds(bad)


def test_paired_ratio_recovers_known_delays_under_drift_and_noise():
    rng = np.random.default_rng(7)
    rounds = 9
    drift = rng.uniform(0.6, 1.6, size=rounds)  # the whole machine speeds up / slows down between rounds
    a = 0.002 * drift * (1 + rng.normal(0, 0.01, rounds))  # true A = 2 ms
    b = 0.005 * drift * (1 + rng.normal(0, 0.01, rounds))  # true B = 5 ms
    r = paired_ratio(a, b)
    assert r.rounds == rounds
    assert r.ratio == pytest.approx(0.4, rel=0.03)
    assert r.speedup == pytest.approx(2.5, rel=0.03)
    assert r.low <= r.ratio <= r.high
    # 1% noise per side: the per-round ratios spread by a few percent, not by the 2.7x drift.
    assert 0 < r.noise < 0.4 * 0.08
    # Pooling medians first would mix rounds of different machine speed; pairing cancels the drift.
    shuffled = paired_ratio(a, np.roll(b, 1))
    assert shuffled.noise > 5 * r.noise


def test_paired_ratio_noise_is_half_the_range():
    r = paired_ratio([1.0, 1.2, 1.1], [2.0, 2.0, 2.0])
    assert r.per_round == pytest.approx((0.5, 0.6, 0.55))
    assert r.ratio == pytest.approx(0.55)
    assert r.noise == pytest.approx(0.05)


@pytest.mark.parametrize("a,b", [([], []), ([1.0], [1.0, 2.0]), ([1.0], [0.0]), ([float("nan")], [1.0])])
def test_paired_ratio_rejects_bad_rounds(a, b):
    with pytest.raises(ConfigError):
        paired_ratio(a, b)
