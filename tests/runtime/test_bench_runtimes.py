"""The bench engine against the real runtimes: onnxruntime and LiteRT in fresh processes, accuracy checked
against numpy, and every bad input a one-line CompressError."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import ConfigError, DataError, ModelLoadError
from compress.runtime.bench import BenchConfig, run_bench
from compress.runtime.runners import Runtime

W = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0], [-1.0, 0.5, 1.5], [0.5, 0.0, -0.5]], np.float32)
B = np.array([0.1, -0.2, 0.0], np.float32)


def write_gemm_onnx(path, batch: str | int = "N") -> str:
    """y = x @ W + b for x [batch, 4], built with onnx.helper (independent of our exporter)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def gemm_onnx(tmp_path):
    return write_gemm_onnx(tmp_path / "gemm.onnx")


@pytest.fixture
def gemm_data(write_npz):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return x, y, write_npz("gemm.npz", x=x, y=y)


def test_onnx_and_tflite_accuracy_agree_with_numpy(tmp_path, gemm_onnx, gemm_data):
    pytest.importorskip("ai_edge_litert")
    import torch

    from compress.exporters.tflite import export_tflite

    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W.T.copy()))
        lin.bias.copy_(torch.from_numpy(B))
    tfl = tmp_path / "gemm.tflite"
    export_tflite(lin.eval(), torch.zeros(1, 4), tfl)
    x, y, data = gemm_data
    expected_acc = float(np.mean((x @ W + B).argmax(1) == y))

    report = run_bench([gemm_onnx, tfl], BenchConfig(rounds=1, runs=5, warmup=1, data=str(data)))
    onnx_row, tfl_row = report["results"]
    assert (onnx_row["runtime"], tfl_row["runtime"]) == ("ort", "litert")
    assert onnx_row["accuracy"] == pytest.approx(expected_acc)
    assert tfl_row["accuracy"] == pytest.approx(expected_acc)
    assert tfl_row["agreement"] == 1.0 and onnx_row["eval_samples"] == 40
    assert onnx_row["file_bytes"] == (tmp_path / "gemm.onnx").stat().st_size
    assert tfl_row["file_bytes"] == tfl.stat().st_size
    for row in (onnx_row, tfl_row):
        assert row["runs"] == 5 and row["latency_ms"]["min"] > 0
        assert row["peak_rss_bytes"] > 10 << 20 and row["load_s"] > 0
        assert row["input_shapes"] == [[1, 4]]
    assert report["machine"]["cpu"]["logical_cores"] >= 1
    assert report["machine"]["versions"]["onnxruntime"]


def test_litert_without_xnnpack_and_batched_dynamic_onnx(tmp_path, gemm_onnx):
    pytest.importorskip("ai_edge_litert")
    import torch

    from compress.exporters.tflite import export_tflite

    tfl = tmp_path / "lin.tflite"
    export_tflite(torch.nn.Linear(4, 3).eval(), torch.zeros(1, 4), tfl)
    report = run_bench([gemm_onnx, tfl], BenchConfig(rounds=1, runs=3, warmup=1, batch=4,
                                                     runtimes=(Runtime.ORT, Runtime.LITERT_NOXNNPACK)))
    onnx_row, tfl_row = report["results"]
    assert tfl_row["runtime"] == "litert-noxnnpack" and tfl_row["runtime_label"] == "LiteRT no-XNNPACK"
    assert onnx_row["input_shapes"] == [[4, 4]]  # the dynamic batch took --batch
    assert tfl_row["input_shapes"] == [[4, 4]]   # LiteRT resized its fixed batch of 1
    assert onnx_row["throughput_per_s"] == pytest.approx(4 * 1000 / onnx_row["latency_ms"]["mean"])


def test_seconds_mode_and_pinning(gemm_onnx):
    report = run_bench([gemm_onnx], BenchConfig(rounds=1, runs=1, seconds=0.2, warmup=1, pin=True))
    row = report["results"][0]
    assert row["runs"] > 20  # a sub-millisecond model runs many times in 0.2 s
    assert row["cpus"] is not None and len(row["cpus"]) == 1


def test_corrupt_artifact_is_a_model_load_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 20)
    with pytest.raises(ModelLoadError, match=r"cannot benchmark .*bad\.onnx: onnxruntime cannot load it") as info:
        run_bench([bad], BenchConfig(rounds=1, runs=1, warmup=0))
    assert "\n" not in str(info.value)


def test_data_that_does_not_fit_the_model(gemm_onnx, write_npz):
    data = write_npz("wrong.npz", x=np.zeros((8, 5), np.float32), y=np.zeros(8, np.int64))
    with pytest.raises(DataError, match=r"per-sample shape \[5\] but input 'x' takes \[4\]"):
        run_bench([gemm_onnx], BenchConfig(rounds=1, runs=1, warmup=0, data=str(data)))


def test_dynamic_dimensions_need_an_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    with pytest.raises(ConfigError, match="dynamic dimensions.*--input-shape"):
        run_bench([path], BenchConfig(rounds=1, runs=1, warmup=0))
    report = run_bench([path], BenchConfig(rounds=1, runs=2, warmup=0, input_shapes=(("x", (2, 7)),)))
    assert report["results"][0]["input_shapes"] == [[2, 7]]


@pytest.mark.slow  # torch.export here plus torch imported in two child processes: ~20 s on 2 busy cores
def test_torch_export_program_accuracy_matches_eager_torch(tmp_path, gemm_data):
    import torch

    lin = torch.nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W.T.copy()))
        lin.bias.copy_(torch.from_numpy(B))
    path = tmp_path / "lin.pt2"
    torch.export.save(torch.export.export(lin.eval(), (torch.zeros(1, 4),)), str(path))
    x, y, data = gemm_data
    with torch.no_grad():
        expected = float((lin(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    report = run_bench([path], BenchConfig(rounds=1, runs=3, warmup=1, data=str(data)))
    row = report["results"][0]
    assert row["runtime"] == "torch" and row["runtime_version"].startswith("2.")
    assert row["accuracy"] == pytest.approx(expected) and row["eval_samples"] == 40
