"""Process isolation and interleaved comparison, with injected numbers and with a synthetic sleeping runner."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

from compress.errors import CompressError, ConfigError, DataError
from compress.runtime import Contender, compare_interleaved, run_isolated

# A measurement module the child imports by name; it sleeps for known delays and reports what it saw.
_HELPER = '''
import os, sys, time
from compress.errors import DataError


def sleepy(delay_ms, runs=10):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        time.sleep(delay_ms / 1000)
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"latency": {"median": samples[len(samples) // 2]}, "samples_s": samples, "pid": os.getpid(),
            "torch_loaded": "torch" in sys.modules, "affinity": sorted(os.sched_getaffinity(0))}


def peak_rss():
    from compress.runtime.onnx_runner import peak_rss_bytes
    return {"latency": {"median": 0.0}, "peak": peak_rss_bytes()}


def bad_data():
    raise DataError("inputs lack 'x'; name the arrays after the model inputs")


def buggy():
    return 1 / 0


def hang():
    time.sleep(60)
'''


@pytest.fixture
def helper(tmp_path, monkeypatch):
    (tmp_path / "fake_measure_mod.py").write_text(textwrap.dedent(_HELPER))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_measure_mod"


def _fake_runner(true_ms: dict[str, float], noise: float, seed: int = 0):
    """A runner returning injected per-run samples: true delay x machine drift x jitter.

    The drift changes slowly (one level per round, shared by the contenders of that round, ±3% between
    processes), the jitter is per run.
    """
    rng = np.random.default_rng(seed)
    round_drift = rng.uniform(0.7, 1.4, size=100)
    calls = []

    def run(fn, kwargs):
        drift = round_drift[len(calls) // len(true_ms)] * rng.uniform(0.97, 1.03)
        calls.append(kwargs["name"])
        samples = true_ms[kwargs["name"]] / 1000 * drift * (1 + rng.normal(0, noise, 50))
        return {"latency": {"median": float(np.median(samples))}, "samples_s": samples.tolist()}

    return run, calls


def test_rounds_rotate_the_order_of_contenders():
    run, calls = _fake_runner({"a": 1.0, "b": 2.0, "c": 3.0}, noise=0.0)
    cs = [Contender(n, "fake", {"name": n}) for n in "abc"]
    c = compare_interleaved(cs, rounds=4, runner=run)
    assert c.order == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert calls == [n for rnd in c.order for n in rnd]
    assert all(len(c.results[n]) == 4 for n in "abc")


def test_interleaved_ratios_of_known_delays_under_injected_noise():
    # The machine speed swings by 2x across rounds and by ±3% between processes, with 2% per-run jitter;
    # the paired ratio must still come out near 4/10, with a noise estimate that covers the truth.
    run, _ = _fake_runner({"ours": 4.0, "fp32": 10.0}, noise=0.02, seed=3)
    cs = [Contender("ours", "fake", {"name": "ours"}), Contender("fp32", "fake", {"name": "fp32"})]
    c = compare_interleaved(cs, rounds=15, runner=run)
    r = c.ratio("ours", "fp32")
    assert r.rounds == 15
    assert r.ratio == pytest.approx(0.4, rel=0.03)
    assert r.noise < 0.4 * 0.08
    assert r.low <= 0.4 <= r.high
    assert r.noise > 0
    pooled = c.pooled("fp32")
    assert pooled.runs == 15 * 50
    assert pooled.median == pytest.approx(0.010, rel=0.4)
    d = c.to_dict()
    assert d["contenders"]["ours"]["round_medians_s"] == c.medians("ours")


def test_progress_callback_counts_every_measurement():
    run, _ = _fake_runner({"a": 1.0, "b": 1.0}, noise=0.0)
    seen = []
    compare_interleaved([Contender("a", "f", {"name": "a"}), Contender("b", "f", {"name": "b"})], rounds=3,
                        runner=run, progress=lambda done, total, name: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]


def test_bad_comparisons_raise_config_error():
    run, _ = _fake_runner({"a": 1.0}, noise=0.0)
    a = Contender("a", "f", {"name": "a"})
    with pytest.raises(ConfigError, match="unique"):
        compare_interleaved([a, a], rounds=2, runner=run)
    with pytest.raises(ConfigError, match="rounds"):
        compare_interleaved([a], rounds=0, runner=run)
    with pytest.raises(ConfigError, match="latency"):
        compare_interleaved([a], rounds=1, runner=lambda fn, kw: {"nothing": 1})
    c = compare_interleaved([a], rounds=1, runner=run)
    with pytest.raises(ConfigError, match="no contender"):
        c.ratio("a", "zzz")


def test_run_isolated_runs_in_a_fresh_lean_process(helper):
    r = run_isolated(f"{helper}:sleepy", {"delay_ms": 2, "runs": 5})
    assert r["pid"] != os.getpid()
    assert r["isolated_pid"] == r["pid"]
    assert r["torch_loaded"] is False  # the child did not run compress/__init__ nor import torch
    assert len(r["samples_s"]) == 5
    assert min(r["samples_s"]) >= 0.002  # sleep never returns early


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM needs Linux /proc")
def test_child_peak_memory_is_its_own_not_the_parents(helper):
    # Linux carries ru_maxrss over fork + exec; the child must not report the parent's 300 MB peak.
    from compress.runtime.onnx_runner import peak_rss_bytes

    big = np.ones(300 * 2**20 // 8)  # touch 300 MB in the parent
    assert peak_rss_bytes() > 300 * 2**20
    del big
    r = run_isolated(f"{helper}:peak_rss")
    assert 0 < r["peak"] < 200 * 2**20


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs Linux")
def test_run_isolated_pins_to_requested_cpus(helper):
    cpu = sorted(os.sched_getaffinity(0))[0]
    r = run_isolated(f"{helper}:sleepy", {"delay_ms": 1, "runs": 1}, cpus=[cpu])
    assert r["affinity"] == [cpu]


def test_isolated_interleaving_of_two_sleepers(helper):
    cs = [Contender("short", f"{helper}:sleepy", {"delay_ms": 3, "runs": 15}),
          Contender("long", f"{helper}:sleepy", {"delay_ms": 9, "runs": 15})]
    c = compare_interleaved(cs, rounds=2)
    assert len({r["pid"] for rs in c.results.values() for r in rs}) == 4  # one process per measurement
    # Sleep overshoots by a roughly constant amount, so the ratio sits a bit above 1/3; loose on purpose.
    assert 0.2 < c.ratio("short", "long").ratio < 0.6


def test_child_compress_errors_come_back_as_the_same_class(helper):
    with pytest.raises(DataError, match="inputs lack 'x'"):
        run_isolated(f"{helper}:bad_data")


def test_child_bugs_come_back_with_the_traceback(helper):
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_isolated(f"{helper}:buggy")


def test_child_timeout_is_a_compress_error(helper):
    with pytest.raises(CompressError, match="did not finish"):
        run_isolated(f"{helper}:hang", timeout=1.5)


@pytest.mark.parametrize("name", ["no_colon_here", "no_such_module_xyz:f", "os:no_such_function"])
def test_unknown_measurement_names_raise_config_error(name):
    with pytest.raises(ConfigError):
        run_isolated(name)


def test_kwargs_must_be_json(helper):
    with pytest.raises(ConfigError, match="JSON"):
        run_isolated(f"{helper}:sleepy", {"delay_ms": object()})


def test_min_statistic_resists_contention_that_only_adds_time():
    # Another process steals the CPU for a random share of the runs; stolen time only ever adds latency.
    rng = np.random.default_rng(11)
    true_ms = {"ours": 12.0, "fp32": 36.0}

    def run(fn, kwargs):
        base = true_ms[kwargs["name"]] / 1000
        busy = rng.uniform(0.2, 0.8)  # how contended this process's time slice is
        samples = base * (1 + rng.normal(0, 0.005, 200).clip(0)) + \
            (rng.random(200) < busy) * rng.exponential(2 * base, 200)
        return {"latency": {"median": float(np.median(samples)), "min": float(samples.min())},
                "samples_s": samples.tolist()}

    cs = [Contender("ours", "f", {"name": "ours"}), Contender("fp32", "f", {"name": "fp32"})]
    c = compare_interleaved(cs, rounds=5, runner=run)
    by_min = c.ratio("ours", "fp32", statistic="min")
    assert by_min.ratio == pytest.approx(1 / 3, rel=0.02)
    assert by_min.noise < c.ratio("ours", "fp32").noise
    assert c.to_dict()["contenders"]["ours"]["round_mins_s"] == c.per_round("ours", "min")
    with pytest.raises(ConfigError, match="unknown statistic"):
        c.ratio("ours", "fp32", statistic="mode")
