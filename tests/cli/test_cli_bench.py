"""``compress bench`` from the command line: the outputs it writes, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest


def gemm_onnx(path) -> str:
    """y = x @ W for x [N, 4] → [N, 3], built with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def assert_one_line_error(result, *fragments: str, exit_code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def model(tmp_path):
    return gemm_onnx(tmp_path / "mm.onnx")


def test_bench_writes_json_markdown_and_plot(cli, tmp_path, model):
    pytest.importorskip("matplotlib")
    result = cli("bench", model, "--threads", "1,2", "--rounds", "2", "--runs", "5", "--warmup", "1",
                 "--json", "r.json", "--markdown", "r.md", "--plot", "r.png")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "compress.bench/1"
    assert [(r["runtime"], r["threads"]) for r in report["results"]] == [("ort", 1), ("ort", 2)]
    assert report["settings"]["rounds"] == 2 and report["settings"]["threads"] == [1, 2]
    for r in report["results"]:
        assert r["runs"] == 10 and set(r["latency_ms"]) == {"median", "p90", "p99", "mean", "std", "min"}
    assert "| mm.onnx | onnxruntime | 2 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "mm.onnx ort 1t" in result.stdout and "wrote r.json, r.md, r.png" in result.stdout


def test_missing_artifact(cli):
    assert_one_line_error(cli("bench", "absent.onnx"), "absent.onnx does not exist", exit_code=3)


def test_corrupt_artifact(cli, tmp_path):
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer" * 8)
    pytest.importorskip("ai_edge_litert")
    assert_one_line_error(cli("bench", "bad.tflite", "--rounds", "1", "--runs", "1"),
                          "cannot benchmark bad.tflite", "LiteRT cannot load it", exit_code=3)


def test_unknown_runtime(cli, model):
    assert_one_line_error(cli("bench", model, "--runtime", "tensorrt"), "unknown runtime 'tensorrt'", "ort",
                          exit_code=2)


def test_runtime_that_cannot_load_the_file(cli, model):
    assert_one_line_error(cli("bench", model, "--runtime", "litert"), "cannot run mm.onnx", exit_code=2)


@pytest.mark.parametrize("threads", ["0", "1,0", "two"])
def test_bad_thread_counts(cli, model, threads):
    assert_one_line_error(cli("bench", model, "--threads", threads), "--threads", exit_code=2)


def test_data_shape_that_does_not_fit(cli, model, write_npz):
    data = write_npz("d.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64))
    assert_one_line_error(cli("bench", model, "--data", data, "--rounds", "1", "--runs", "1"),
                          "per-sample shape [1, 8, 8]", "takes [4]", exit_code=4)


def test_unreachable_device(cli, model, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = assert_one_line_error(cli("bench", model, "--device", f"ssh://127.0.0.1:{port}"), "cannot reach")
    assert f"127.0.0.1:{port}" in line


def test_bad_option_combinations(cli, model):
    assert_one_line_error(cli("bench", model, "--runs", "5", "--seconds", "1"), "--runs or --seconds")
    assert_one_line_error(cli("bench", model, "--plot", "r.jpg"), "PNG")
    assert_one_line_error(cli("bench", model, "--remote-python", "/usr/bin/python3"), "--device")
    assert_one_line_error(cli("bench", model, "--device", "pi"), "ssh://")
