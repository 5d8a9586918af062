"""The bench engine's statistics: known synthetic delay distributions in, the right numbers in the report out.

The engine is driven through a fake executor (no processes) for the distribution and noise tests, and through
the real runner script in a real process with a busy-waiting synthetic model for the timing loop itself.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compress.errors import ConfigError, DataError, ModelLoadError
from compress.runtime.bench import BenchConfig, plan, run_bench
from compress.runtime.report import fmt_ratio, render_tables, to_markdown
from compress.runtime.runners import LocalExecutor, Runtime, parse_runtimes, runtimes_for

MACHINE = {"cpu": {"model": "Fake CPU", "arch": "x86_64", "isa": ["avx2"], "logical_cores": 2},
           "os": {"system": "Linux"}, "python": {"version": "3.11"}, "versions": {}, "git": None}


class FakeExecutor:
    """Answers ``measure`` with samples from ``sampler(artifact_name, round, rng)`` and ``evaluate`` from a table."""

    host = None

    def __init__(self, sampler, n_contenders: int, predictions: dict | None = None, labels=None, seed: int = 0):
        self.sampler, self.n = sampler, n_contenders
        self.predictions, self.labels = predictions or {}, labels
        self.rng = np.random.default_rng(seed)
        self.measured: list[dict] = []

    def stage(self, paths):
        return {str(p): str(p) for p in paths}

    def describe(self):
        return MACHINE

    def call(self, mode, request, *, artifact=None):
        name = request["path"].rsplit("/", 1)[-1]
        if mode == "evaluate":
            preds = self.predictions[name]
            acc = None if self.labels is None else float(np.mean(np.asarray(preds) == self.labels))
            return {"predictions": preds, "samples": len(preds), "accuracy": acc}
        rnd = len(self.measured) // self.n
        self.measured.append(dict(request))
        samples = self.sampler(name, rnd, self.rng)
        return {"samples_s": [float(s) for s in samples], "load_s": 0.01 * (rnd + 1), "first_run_s": 0.002,
                "peak_rss_bytes": 1000 + rnd, "file_bytes": 123, "runtime_version": "fake",
                "input_shapes": [[1, 4]], "cpus": None}


@pytest.fixture
def artifacts(tmp_path):
    paths = []
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(b"not read by the fake executor")
        paths.append(str(tmp_path / name))
    return paths


def test_statistics_of_a_known_lognormal_delay(artifacts):
    # Per-run latency ~ 2 ms * exp(0.3 * N(0, 1)): median 2, p90 2*e^(0.3*1.2816), p99 2*e^(0.3*2.3263),
    # mean 2*e^(0.045), min > 0; 6 rounds x 500 runs.
    sigma = 0.3

    def sampler(name, rnd, rng):
        return 2e-3 * np.exp(sigma * rng.standard_normal(500))

    ex = FakeExecutor(sampler, 1)
    report = run_bench(artifacts[:1], BenchConfig(rounds=6, runs=500), executor=ex)
    r = report["results"][0]
    lat = r["latency_ms"]
    assert r["runs"] == 3000 and len(r["round_medians_ms"]) == 6
    assert lat["median"] == pytest.approx(2.0, rel=0.03)
    assert lat["p90"] == pytest.approx(2.0 * math.exp(sigma * 1.2816), rel=0.04)
    assert lat["p99"] == pytest.approx(2.0 * math.exp(sigma * 2.3263), rel=0.08)
    assert lat["mean"] == pytest.approx(2.0 * math.exp(sigma**2 / 2), rel=0.03)
    assert lat["std"] == pytest.approx(2.0 * math.sqrt((math.exp(sigma**2) - 1) * math.exp(sigma**2)), rel=0.08)
    assert 0 < lat["min"] < lat["median"] < lat["p90"] < lat["p99"]
    assert r["throughput_per_s"] == pytest.approx(1000 / lat["mean"], rel=1e-9)
    assert r["load_s"] == pytest.approx(0.04)  # median of 0.01..0.06 over 6 rounds (upper middle)
    assert r["peak_rss_bytes"] == 1005  # the largest process
    assert r["vs_baseline"] is None and report["baseline"] == r["id"]


def test_paired_ratios_of_known_delays_under_injected_noise(artifacts):
    # b is 2.5x slower than a. The machine's speed swings 0.6..1.6x between rounds (shared by both processes
    # of a round, +-2% each), runs jitter by 3%: the paired ratio must come out near 2.5 all the same.
    true_ms = {"a.onnx": 1.0, "b.onnx": 2.5}
    drift = np.random.default_rng(7).uniform(0.6, 1.6, size=50)

    def sampler(name, rnd, rng):
        level = drift[rnd] * rng.uniform(0.98, 1.02)
        return true_ms[name] / 1e3 * level * (1 + 0.03 * rng.standard_normal(100))

    ex = FakeExecutor(sampler, 2)
    report = run_bench(artifacts, BenchConfig(rounds=9, runs=100), executor=ex)
    a, b = report["results"]
    vs = b["vs_baseline"]
    assert vs["baseline"] == a["id"]
    r = vs["median"]
    assert r["rounds"] == 9
    assert r["ratio"] == pytest.approx(2.5, rel=0.03)
    assert r["low"] <= 2.5 <= r["high"]  # the noise estimate covers the truth
    assert 0 < r["noise"] < 2.5 * 0.06
    assert vs["min"]["ratio"] == pytest.approx(2.5, rel=0.1)
    # Pooling across rounds mixes the 0.6..1.6x drift into the spread; the round medians show it.
    assert max(a["round_medians_ms"]) / min(a["round_medians_ms"]) > 1.5
    # A B, B A, A B, ...: alternation recorded in the report, every process measured once per round.
    order = report["settings"]["order"]
    assert order[0] == [a["id"], b["id"]] and order[1] == [b["id"], a["id"]]
    assert "×±" in fmt_ratio(vs)


def test_contenders_span_runtimes_and_threads_with_same_thread_baselines(tmp_path):
    onnx, tfl = tmp_path / "m.onnx", tmp_path / "m.tflite"
    onnx.write_bytes(b"x")
    tfl.write_bytes(b"x")
    cs = plan([onnx, tfl], BenchConfig(threads=(1, 2), runtimes=parse_runtimes("ort,litert,litert-noxnnpack")))
    assert [(c.name, c.runtime.value, c.threads) for c in cs] == [
        ("m.onnx", "ort", 1), ("m.onnx", "ort", 2), ("m.tflite", "litert", 1), ("m.tflite", "litert", 2),
        ("m.tflite", "litert-noxnnpack", 1), ("m.tflite", "litert-noxnnpack", 2)]
    assert [c.baseline for c in cs] == [None, None, "m.onnx ort 1t", "m.onnx ort 2t", "m.onnx ort 1t",
                                        "m.onnx ort 2t"]
    assert runtimes_for(tfl) == (Runtime.LITERT,)
    with pytest.raises(ConfigError, match="cannot run m.onnx"):
        plan([onnx], BenchConfig(runtimes=(Runtime.LITERT,)))


def test_accuracy_and_agreement_come_from_each_artifacts_predictions(artifacts, write_npz):
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    preds = {"a.onnx": [0, 1, 2, 1, 0, 2, 1, 1],   # 7/8 right
             "b.onnx": [0, 1, 2, 0, 0, 2, 1, 0]}   # 5/8 right; agrees with a on 6/8
    data = write_npz("data.npz", x=np.zeros((8, 4), np.float32), y=labels)
    ex = FakeExecutor(lambda n, r, rng: [1e-3] * 5, 4, predictions=preds, labels=labels)
    report = run_bench(artifacts, BenchConfig(threads=(1, 2), rounds=2, runs=5, data=str(data)), executor=ex)
    rows = {(r["name"], r["threads"]): r for r in report["results"]}
    assert rows[("a.onnx", 1)]["accuracy"] == pytest.approx(7 / 8)
    assert rows[("a.onnx", 2)]["agreement"] is None
    assert rows[("b.onnx", 2)]["accuracy"] == pytest.approx(5 / 8)
    assert rows[("b.onnx", 1)]["agreement"] == pytest.approx(6 / 8)
    assert report["settings"]["data"] == {"path": str(data), "samples": 8, "labels": True}
    md = to_markdown(report)
    assert "87.50%" in md and "75.00%" in md and "Fake CPU" in md
    json.dumps(report)  # JSON-ready as it is


def test_report_renders_and_plots(artifacts, tmp_path):
    pytest.importorskip("matplotlib")
    from rich.console import Console

    from compress.runtime.plot import plot_report

    ex = FakeExecutor(lambda n, r, rng: rng.uniform(1e-3, 2e-3, 20), 2)
    report = run_bench(artifacts, BenchConfig(rounds=3, runs=20), executor=ex)
    console = Console(width=80, record=True)
    console.print(render_tables(report))
    text = console.export_text()
    assert "a.onnx ort" in text and "vs first" in text and "×±" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    png = plot_report(json.loads(json.dumps(report)), tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="PNG"):
        plot_report(report, tmp_path / "r.jpg")


@pytest.mark.parametrize("kwargs, match", [
    ({"threads": (0,)}, "thread counts"), ({"runs": 0}, "--runs"), ({"rounds": 0}, "--rounds"),
    ({"batch": 0}, "--batch"), ({"seconds": -1.0}, "--seconds"), ({"warmup": -1}, "--warmup"),
    ({"input_shapes": (("", (1, 0)),)}, "positive"),
])
def test_bad_settings_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


def test_bad_artifacts_and_data_are_refused_before_measuring(tmp_path, artifacts, write_npz):
    ex = FakeExecutor(lambda n, r, rng: [1e-3], 1)
    with pytest.raises(ModelLoadError, match="does not exist"):
        run_bench([tmp_path / "absent.onnx"], executor=ex)
    (tmp_path / "m.bin2").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"\.onnx, \.tflite"):
        run_bench([tmp_path / "m.bin2"], executor=ex)
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        parse_runtimes("ort,tensorrt")
    with pytest.raises(DataError, match="no input arrays"):
        run_bench(artifacts[:1], BenchConfig(data=str(write_npz("d.npz", y=np.zeros(3, int)))), executor=ex)
    with pytest.raises(DataError, match="one integer label"):
        run_bench(artifacts[:1], BenchConfig(data=str(write_npz("e.npz", x=np.zeros((3, 2)), y=np.zeros(2)))),
                  executor=ex)
    assert ex.measured == []


def test_runner_process_times_a_known_delay_distribution(tmp_path):
    # The real runner script in a fresh process, on a model that waits U(1, 3) ms per run. Its delays are
    # drawn from a seeded generator, so the test knows each planned delay: every sample must cover its
    # planned delay (the right run was timed, in the right unit) and exceed it by little (what the harness
    # and the scheduler add); a busy machine only adds time, hence one-sided bounds.
    spec = tmp_path / "synthetic.json"
    spec.write_text(json.dumps({"uniform_ms": [1.0, 3.0], "seed": 1}))
    warmup, runs = 2, 150
    result = LocalExecutor().call("measure", {"runtime": "synthetic", "path": str(spec), "runs": runs,
                                              "warmup": warmup})
    samples = np.asarray(result["samples_s"]) * 1e3
    planned = np.random.default_rng(1).uniform(1.0, 3.0, size=warmup + runs)[warmup:]
    assert len(samples) == runs
    assert (samples >= planned - 1e-3).all()
    assert np.median(samples - planned) < 0.5
    assert np.median(planned) == pytest.approx(2.0, rel=0.1)  # the distribution itself is as specified
    assert result["peak_rss_bytes"] > 1 << 20 and result["pid"] > 0
