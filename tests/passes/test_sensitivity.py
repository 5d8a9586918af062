"""Sensitivity analysis and mixed precision (compress/passes/sensitivity.py) and its metrics (passes/metric.py).

Figures are checked against numpy written here (cosine, accuracy) and against models whose sensitive layer is
known by construction (tests/cli/sensitivity_net.py: an outlier weight on an always-zero input makes static
int8 of ``fc1`` round its real weights to zero; the float function is unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError, DataError
from compress.io import Dataset
from compress.passes import calibrate, prepare
from compress.passes.metric import Metric, MetricKind, cosine, resolve_metric
from compress.passes.sensitivity import SensitivityConfig, _units, plan_layer_modes, sensitivity_config
from compress.quant.config import QuantConfig, QuantMode
from tests.cli.sensitivity_net import NET_FILE, digits, trained_net


def test_cosine_is_the_mean_per_sample_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 3, 4))
    b[2] = 0.0
    a[2] = 0.0  # both all-zero: identical
    expected = []
    for x, y in zip(a.reshape(5, -1), b.reshape(5, -1), strict=True):
        nx, ny = np.sqrt(np.sum(x * x)), np.sqrt(np.sum(y * y))
        expected.append(1.0 if nx == ny == 0 else float(np.sum(x * y) / (nx * ny)))
    assert cosine(a, b) == pytest.approx(np.mean(expected), abs=1e-12)


def test_default_metric_follows_labels_and_output_shape():
    x = np.zeros((4, 3), np.float32)
    labelled, unlabelled = Dataset(x, np.array([0, 1, 1, 0])), Dataset(x, None)
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 0.0]])
    acc = resolve_metric(None, labelled, logits)
    assert acc.kind is MetricKind.ACCURACY
    assert acc.score(logits, logits, labelled) == pytest.approx(np.mean(logits.argmax(1) == labelled.y))
    assert resolve_metric(None, unlabelled, logits).kind is MetricKind.AGREEMENT
    assert resolve_metric(None, labelled, np.zeros((4, 6, 5))).kind is MetricKind.COSINE
    with pytest.raises(ConfigError, match="labels"):
        resolve_metric("accuracy", unlabelled, logits)
    with pytest.raises(ConfigError, match="cosine"):
        resolve_metric("agreement", unlabelled, np.zeros((4, 6, 5)))


def test_custom_metric_by_file_spec_and_its_errors(tmp_path):
    x, y = digits()
    batch = Dataset(x[:50], y[:50])
    outputs = np.random.default_rng(1).normal(size=(50, 10))
    metric = resolve_metric(f"{NET_FILE}:agreement_with_labels", batch, outputs)
    assert metric.kind is MetricKind.CUSTOM and metric.name.endswith("agreement_with_labels")
    assert metric.score(outputs, outputs, batch) == pytest.approx(np.mean(outputs.argmax(1) == y[:50]))
    for spec, needle in (("no_such_module_q:f", "no_such_module_q"), ("top5", "unknown metric"),
                         (f"{NET_FILE}:missing", "missing")):
        with pytest.raises(ConfigError, match=needle) as info:
            sensitivity_config(1.0, spec)
        assert "\n" not in str(info.value)
    bad = tmp_path / "bad.py"
    bad.write_text("def nan(outputs, batch):\n    return float('nan')\ndef boom(outputs, batch):\n    raise KeyError('y')\n")
    for name in ("nan", "boom"):
        with pytest.raises(DataError, match=name if name == "nan" else "KeyError"):
            resolve_metric(f"{bad}:{name}", batch, outputs).score(outputs, outputs, batch)


@pytest.fixture(scope="module")
def mlp_data():
    x, y = digits()
    return trained_net(), Dataset(x[:256], None, "calib"), Dataset(x[1200:], y[1200:], "eval")


@pytest.mark.slow
def test_plan_moves_only_the_layer_int8_destroys(mlp_data):
    net, calib, evaluation = mlp_data
    result = plan_layer_modes(net, calib, evaluation, config=SensitivityConfig(max_drop=1.0), progress=False)
    with torch.no_grad():
        fp32 = float(np.mean(net(torch.from_numpy(evaluation.x[:512])).numpy().argmax(1) == evaluation.y[:512]))
    assert result.metric == "accuracy" and result.fp32 == pytest.approx(fp32)
    assert result.quantized < 0.3  # all static: the model guesses among 10 classes
    assert result.layer_modes == {"fc1": "float"} and result.mode == "static"
    assert result.within_budget and 100 * (fp32 - result.planned) <= 1.0
    rows = {r.layer: r for r in result.rows}
    assert rows["fc1"].gain_pp > 50 and rows["fc1"].drop_alone_pp > 50 and rows["fc1"].mode == "float"
    assert all(abs(rows[k].gain_pp) < 2 and rows[k].mode == "static" for k in ("fc2", "fc3"))
    assert result.rows[0].layer == "fc1"  # ranked most sensitive first
    section = result.to_dict()
    assert section["layers"][0]["layer"] == "fc1" and section["within_budget"] is True


def test_a_model_within_budget_costs_one_evaluation_without_the_table(mlp_data):
    _, calib, evaluation = mlp_data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    result = plan_layer_modes(net, calib, evaluation.take(64), config=SensitivityConfig(max_drop=100),
                              table=False, progress=False)
    assert result.measurements == 1 and result.layer_modes == {}
    assert all(r.gain_pp is None and "not measured" in r.reason for r in result.rows)


class _SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.fc(x))))


def test_a_module_called_twice_is_one_decision():
    torch.manual_seed(0)
    net = _SharedTwice().eval()
    data = Dataset(np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32), None)
    prepared = calibrate(prepare(net, data.example(1)), data, progress=False)
    modules = dict(prepared.named_modules())
    units = _units(prepared, modules)
    assert set(units) == {"fc", "head"} and len(units["fc"]) == 2 and units["head"] == ["head"]
    result = plan_layer_modes(net, data, data, config=SensitivityConfig(max_drop=0.0), progress=False)
    assert sorted(r.layer for r in result.rows) == ["fc", "head"]


def test_config_rejects_a_negative_budget():
    with pytest.raises(ConfigError, match="≥ 0"):
        SensitivityConfig(max_drop=-0.5)
    assert Metric(MetricKind.COSINE).name == "cosine"


@pytest.mark.slow
def test_auto_picks_dynamic_where_no_static_plan_holds():
    # One corrupted calibration sample (pixel 0 = 1000) stretches the static input grid to ~4 per step: every
    # real pixel (0..1) rounds to zero whichever layers go float. Dynamic quantizes each call's own range.
    x, y = digits()
    net = trained_net(outlier=False)
    cx = x[:128].copy()
    cx[0, 0] = 1000.0
    calib, evaluation = Dataset(cx, None, "calib"), Dataset(x[1200:1456], y[1200:1456], "eval")
    with torch.no_grad():
        fp32 = float(np.mean(net(torch.from_numpy(evaluation.x)).numpy().argmax(1) == evaluation.y))
    static = plan_layer_modes(net, calib, evaluation, config=SensitivityConfig(max_drop=1.0), table=False,
                              progress=False)
    assert not static.within_budget and "every layer in float" in static.note
    assert "--mode auto" in static.warning()
    # measure=False: the latency prior (static < dynamic < weight-only); measured ladders are tested below
    auto = plan_layer_modes(net, calib, evaluation, config=SensitivityConfig(max_drop=1.0, auto=True, measure=False),
                            table=False, progress=False)
    assert auto.fp32 == pytest.approx(fp32) and 100 * (fp32 - static.quantized) > 20
    assert auto.mode == "dynamic" and auto.within_budget and 100 * (fp32 - auto.planned) <= 1.0
    tflite = sensitivity_config(1.0, None, auto=True, formats=("onnx", "tflite"), measure=False)
    assert "dynamic" not in tflite.modes and tflite.latency.runtimes == ("onnxruntime", "litert")
    without_dynamic = plan_layer_modes(net, calib, evaluation, config=tflite, table=False, progress=False)
    assert without_dynamic.mode == "weight-only" and without_dynamic.within_budget
    assert auto.latency["ladder"] == "prior" and "measure=False" in auto.latency["note"]


# Injected per-layer latency tables (ms): deterministic, so the planner's use of them is tested without timing.
PRIOR_LIKE = {"static": 1.0, "dynamic": 2.0, "weight-only": 3.0, "float": 4.0}
DYNAMIC_FASTEST = {"static": 3.0, "dynamic": 1.0, "weight-only": 2.5, "float": 0.5}
WEIGHT_ONLY_FASTEST = {"static": 3.0, "dynamic": 2.0, "weight-only": 1.0, "float": 0.2}


@pytest.mark.slow
def test_auto_starts_each_layer_on_its_fastest_measured_mode(mlp_data):
    # fc1 has to leave int8 whatever the table says (its weights round to zero in every int8 mode); fc2 and fc3
    # are within budget in any mode, so they take the mode the table says is fastest. Float is faster still in
    # the table, but it gives up the int8 size: it is never chosen for speed. The prior would give {fc1: float}.
    net, calib, evaluation = mlp_data
    table = {"fc1": PRIOR_LIKE, "fc2": DYNAMIC_FASTEST, "fc3": WEIGHT_ONLY_FASTEST}
    result = plan_layer_modes(net, calib, evaluation, config=SensitivityConfig(max_drop=1.0, auto=True),
                              table=False, progress=False, latency=table)
    assert result.within_budget
    assert result.mode == "static"  # one layer starts in each mode: the tier's mode breaks the tie
    assert result.layer_modes == {"fc1": "float", "fc2": "dynamic", "fc3": "weight-only"}
    rows = {r["layer"]: r for r in result.to_dict()["layers"]}
    assert rows["fc2"]["mode_ms"] == 1.0 and rows["fc3"]["mode_ms"] == 1.0 and rows["fc1"]["mode_ms"] == 4.0
    assert rows["fc2"]["latency_ms"] == {"onnxruntime": DYNAMIC_FASTEST}
    assert result.latency["ladder"] == "measured" and result.latency["source"] == "injected"
    # With one mode fastest for most layers, that mode is the base (the ops between layers follow it).
    dynamic = plan_layer_modes(net, calib, evaluation, config=SensitivityConfig(max_drop=1.0, auto=True),
                               table=False, progress=False,
                               latency={"fc1": PRIOR_LIKE, "fc2": DYNAMIC_FASTEST, "fc3": DYNAMIC_FASTEST})
    assert dynamic.mode == "dynamic" and dynamic.layer_modes == {"fc1": "float"}


def test_ladders_follow_the_table_and_drop_slower_less_accurate_modes():
    from compress.passes.layer_latency import ModeLadders

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(1, 8)
    prepared = prepare(net, (x,))
    units = _units(prepared, dict(prepared.named_modules()))
    allowed = set(QuantMode)
    table = {"0": {"static": 3.0, "dynamic": 1.0, "weight-only": 2.0, "float": 0.1},
             "2": {"static": 1.0, "dynamic": 1.02, "weight-only": 5.0, "float": 9.0}}
    ladders = ModeLadders(prepared, units, (x,), QuantConfig(), allowed, given=table)
    # static is slower than dynamic (more accurate): it leaves the ladder; float stays last
    assert ladders.ladder("0", QuantMode.STATIC) == [QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY, QuantMode.FLOAT]
    assert ladders.starts()[0] == (QuantMode.DYNAMIC, {})
    # dynamic within TIE (5 %) of static: the more accurate mode wins the tie
    assert ladders.order("2", [QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]) == \
        [QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]
    prior = ModeLadders(prepared, units, (x,), QuantConfig(), allowed, measure=False)
    assert prior.ladder("0", QuantMode.STATIC) == [QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY, QuantMode.FLOAT]
    assert [b for b, _ in prior.starts()] == [QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]
    assert prior.summary()["ladder"] == "prior"


def test_for_tflite_a_layer_is_dynamic_only_where_litert_was_written_dynamic():
    from compress.passes.layer_latency import LatencyConfig, LatencyTable, ModeLadders

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(1, 8)
    prepared = prepare(net, (x,))
    units = _units(prepared, dict(prepared.named_modules()))
    fast_dynamic = {"static": 3.0, "dynamic": 1.0, "weight-only": 2.0, "float": 0.5}
    no_dynamic = {m: v for m, v in fast_dynamic.items() if m != "dynamic"}  # the TFLite exporter refused it
    table = LatencyTable(("onnxruntime", "litert"), {"0": {"onnxruntime": fast_dynamic, "litert": no_dynamic},
                                                    "2": {"onnxruntime": fast_dynamic, "litert": fast_dynamic}},
                         source="injected")
    both = LatencyConfig(runtimes=("onnxruntime", "litert"))
    ladders = ModeLadders(prepared, units, (x,), QuantConfig(), set(QuantMode), config=both, given=table)
    assert ladders.candidates("0") == [QuantMode.STATIC, QuantMode.WEIGHT_ONLY]
    assert ladders.candidates("2") == [QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY]
    base, start = ladders.starts()[0]
    assert {"0": start.get("0", base), "2": start.get("2", base)} == {"0": QuantMode.WEIGHT_ONLY,
                                                                      "2": QuantMode.DYNAMIC}
    assert "dynamic" in sensitivity_config(1.0, None, formats=("onnx", "tflite")).modes  # measured: per layer
    unmeasured = ModeLadders(prepared, units, (x,), QuantConfig(), set(QuantMode), measure=False, config=both)
    assert QuantMode.DYNAMIC not in unmeasured.candidates("2")


def test_a_failed_measurement_falls_back_to_the_prior_and_says_why(mlp_data, monkeypatch):
    import compress.passes.layer_latency as layer_latency

    def broken(*args, **kwargs):
        raise ImportError("onnxruntime is not installed")

    monkeypatch.setattr(layer_latency, "measure_layer_latency", broken)
    _, calib, evaluation = mlp_data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    result = plan_layer_modes(net, calib, evaluation.take(64), config=SensitivityConfig(max_drop=100, auto=True),
                              table=False, progress=False)
    assert result.mode == "static" and result.layer_modes == {}
    assert result.latency["ladder"] == "prior" and "onnxruntime is not installed" in result.latency["note"]
