"""The per-layer latency table (compress/passes/layer_latency.py): real one-layer files timed in onnxruntime and
LiteRT, the cache, the time bound, the interleaved timing loop.

Timings are never compared with each other (that depends on the machine and its load): the tests assert that a
figure exists, is positive and finite for every mode, and where it came from (timed now or read from the cache).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import compress.passes.layer_latency as layer_latency
from compress.passes.layer_latency import (
    LatencyConfig,
    LatencyTable,
    LayerCase,
    cache_file,
    measure_layer_latency,
    record_cases,
    time_interleaved_median,
)
from compress.quant.config import QuantMode

ALL_MODES = (QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY, QuantMode.FLOAT)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(layer_latency, "_MEMORY", {})
    return tmp_path / "cache"


def _cases():
    torch.manual_seed(0)
    return [LayerCase("enc.fc", nn.Linear(32, 64), (torch.randn(1, 8, 32),), ALL_MODES),
            LayerCase("conv", nn.Conv2d(3, 8, 3, padding=1), (torch.randn(1, 3, 16, 16),),
                      (QuantMode.STATIC, QuantMode.WEIGHT_ONLY, QuantMode.FLOAT))]


@pytest.mark.onnx
def test_each_mode_is_timed_in_onnxruntime_then_read_from_the_cache(cache_dir, monkeypatch):
    import onnxruntime as ort

    sessions = []
    real_session = ort.InferenceSession

    def recording_session(path, *args, **kwargs):  # the files really are loaded by onnxruntime
        sessions.append(path)
        return real_session(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    cases = _cases()
    config = LatencyConfig(runs=40, min_runs=10)
    table = measure_layer_latency(cases, config=config)
    assert table.source == "measured" and not table.skipped
    for case in cases:
        figures = table.ms[case.unit]["onnxruntime"]
        assert sorted(figures) == sorted(m.value for m in case.modes)
        assert all(math.isfinite(v) and v > 0 for v in figures.values())
    assert table.timed == 7 and table.cached == 0 and len(sessions) == 7
    assert all(str(p).endswith(".onnx") for p in sessions)

    # A second run (another process: the memory cache emptied) reads every figure from disk, times nothing.
    monkeypatch.setattr(layer_latency, "_MEMORY", {})
    again = measure_layer_latency(cases, config=config)
    assert again.timed == 0 and again.cached == 7 and again.ms == table.ms and len(sessions) == 7
    stored = json.loads(cache_file(table.machine).read_text())
    assert stored["version"] == layer_latency.TABLE_VERSION and len(stored["ms"]) == 7

    # Same op and shapes under another name: one measurement serves both (the key holds no layer name).
    twin = LayerCase("other.fc", nn.Linear(32, 64), (torch.zeros(1, 8, 32),), ALL_MODES)
    assert measure_layer_latency([twin], config=config).ms["other.fc"] == table.ms["enc.fc"]
    wider = LayerCase("wide", nn.Linear(32, 65), (torch.zeros(1, 8, 32),), (QuantMode.STATIC,))
    assert measure_layer_latency([wider], config=config).timed == 1  # a different shape is timed


@pytest.mark.tflite
def test_litert_times_the_modes_its_exporter_writes(cache_dir):
    case = LayerCase("fc", nn.Linear(16, 32), (torch.randn(1, 16),), (QuantMode.STATIC, QuantMode.FLOAT))
    table = measure_layer_latency([case], config=LatencyConfig(runtimes=("onnxruntime", "litert"), runs=30,
                                                               min_runs=10))
    for runtime in ("onnxruntime", "litert"):
        assert set(table.ms["fc"][runtime]) == {"static", "float"}
        assert all(v > 0 for v in table.ms["fc"][runtime].values())
    assert table.cost("fc", QuantMode.STATIC) == table.ms["fc"]["onnxruntime"]["static"]  # the first runtime


def test_layers_past_the_time_budget_are_skipped_with_the_reason(cache_dir):
    cases = _cases()
    table = measure_layer_latency(cases, config=LatencyConfig(runs=10, min_runs=5, budget_s=1e-6))
    assert set(table.skipped) == {"enc.fc", "conv"} and not table.ms
    assert all("measuring budget" in why for why in table.skipped.values())


def test_a_layer_the_exporter_cannot_write_is_skipped_not_fatal(cache_dir, monkeypatch):
    from compress.errors import ExportError

    real_write = layer_latency._write_file

    def write(case, mode, runtime, *args):
        if case.unit == "odd":
            raise ExportError("no onnx emitter for Odd; keep it float")
        return real_write(case, mode, runtime, *args)

    monkeypatch.setattr(layer_latency, "_write_file", write)
    odd = LayerCase("odd", nn.Linear(4, 4), (torch.randn(1, 4),), (QuantMode.FLOAT,))
    table = measure_layer_latency([odd, _cases()[0]], config=LatencyConfig(runs=10, min_runs=5))
    assert table.skipped == {"odd": "not measured: no onnx emitter for Odd; keep it float"}
    assert set(table.ms) == {"enc.fc"}


def test_interleaved_median_calls_every_runner_equally_in_rotating_order():
    order: list[int] = []
    runners = [lambda i=i: order.append(i) for i in range(3)]
    medians = time_interleaved_median(runners, runs=7, min_runs=7, seconds=10.0)
    timed = order[9:]  # after 3 warm-up calls each
    assert [timed.count(i) for i in range(3)] == [7, 7, 7] and len(medians) == 3
    assert timed[:3] == [0, 1, 2] and timed[3:6] == [1, 2, 0]  # rotated, so no runner always follows another


def test_record_cases_captures_the_real_input_of_each_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(2, 6)
    cases = record_cases(net, {"a": "0", "b": "2"}, (x,), {"a": net[0], "b": net[2]},
                         {"a": (QuantMode.STATIC,), "b": (QuantMode.FLOAT,)})
    assert [c.unit for c in cases] == ["a", "b"]
    assert torch.equal(cases[0].inputs[0], x)
    np.testing.assert_allclose(cases[1].inputs[0].numpy(), torch.relu(net[0](x)).detach().numpy())
    assert cases[0].shape_key() != cases[1].shape_key()


def test_injected_table_reads_mode_names_as_the_cli_writes_them():
    table = LatencyTable.from_ms({"fc": {"weight_only": 2.0, "float": 1.0}})
    assert table.cost("fc", QuantMode.WEIGHT_ONLY) == 2.0 and table.cost("fc", QuantMode.STATIC) is None
    assert table.cost("missing", QuantMode.FLOAT) is None
