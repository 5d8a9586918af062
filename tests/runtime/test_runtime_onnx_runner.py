"""measure_onnx on a tiny hand-built ONNX graph: bookkeeping and errors (no timing asserts)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from compress.errors import ConfigError, DataError, ModelLoadError
from compress.runtime import measure_onnx, run_isolated

pytestmark = pytest.mark.onnx


def _matmul_model(path, dynamic: bool = False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    dim = "n" if dynamic else 1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_measure_onnx_reports_every_run_and_the_process(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx")
    r = measure_onnx(path, threads=1, warmup=2, runs=7, batch=3)
    assert len(r["samples_s"]) == 7
    lat = r["latency"]
    assert lat["runs"] == 7
    assert lat["median"] == pytest.approx(float(np.median(r["samples_s"])))
    assert lat["throughput"] == pytest.approx(3 / float(np.mean(r["samples_s"])))
    assert r["file_bytes"] == os.path.getsize(path)
    assert r["session_create_s"] > 0
    assert r["peak_rss_bytes"] >= (r["rss_before_bytes"] or 0) > 0
    assert r["threads"] == 1 and r["pid"] == os.getpid()


def test_measure_onnx_takes_npz_inputs_and_a_time_budget(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx", dynamic=True)
    np.savez(tmp_path / "in.npz", x=np.ones((4, 64), np.float32))
    r = measure_onnx(path, tmp_path / "in.npz", warmup=0, runs=1, seconds=0.05)
    assert r["latency"]["runs"] >= 1
    assert sum(r["samples_s"]) > 0


def test_measure_onnx_in_a_subprocess(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx")
    r = run_isolated("measure_onnx", {"path": str(path), "threads": 1, "warmup": 1, "runs": 3})
    assert r["pid"] != os.getpid()
    assert r["latency"]["runs"] == 3


def test_measure_onnx_errors(tmp_path):
    good = _matmul_model(tmp_path / "mm.onnx")
    dynamic = _matmul_model(tmp_path / "dyn.onnx", dynamic=True)
    (tmp_path / "corrupt.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelLoadError, match="does not exist"):
        measure_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="cannot load"):
        measure_onnx(tmp_path / "corrupt.onnx")
    with pytest.raises(ConfigError, match="threads"):
        measure_onnx(good, threads=0)
    with pytest.raises(ConfigError, match="runs"):
        measure_onnx(good, runs=0)
    with pytest.raises(ConfigError, match="dynamic shape"):
        measure_onnx(dynamic)
    with pytest.raises(DataError, match="lack"):
        measure_onnx(good, {"input": np.ones((1, 64), np.float32)})
    with pytest.raises(DataError, match="does not exist"):
        measure_onnx(good, tmp_path / "nope.npz")
