"""`compress quantize` end to end, and that the CLI passes every option through to the library unchanged."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cli.quantize import OBSERVER_CHOICES, TARGET_CHOICES


def _onnx_run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.onnx
def test_quantize_state_dict_end_to_end(cli, tmp_path, calib_npz, state_dict_file, tiny_arch, tiny_cnn, digits_like):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "--eval", calib_npz,
                 "-o", "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert (out / "model.onnx").is_file() and (out / "model_fp32.onnx").is_file()
    assert "onnxruntime int8" in result.stdout and "wrote out" in result.stdout

    report = json.loads((out / "report.json").read_text())
    for key in ("fp32", "int8", "parity", "float_ops", "artifacts"):
        assert key in report
    for key in ("accuracy", "top1_agreement"):
        assert key in report["int8"]
    assert "accuracy" in report["fp32"]
    assert {"max_abs_lsb", "within_1lsb_fraction"} <= set(report["parity"])
    assert isinstance(report["float_ops"], list)
    for artifact in report["artifacts"]:
        assert {"path", "format", "bytes"} <= set(artifact)
        path = Path(artifact["path"])
        path = path if path.is_absolute() else out / path
        assert path.stat().st_size == artifact["bytes"], artifact

    # The report's numbers, recomputed here with onnxruntime and torch directly.
    x, y = digits_like
    fp32 = _onnx_run(out / "model_fp32.onnx", x)
    int8 = _onnx_run(out / "model.onnx", x)
    with torch.no_grad():
        np.testing.assert_allclose(fp32, tiny_cnn(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)
    assert report["fp32"]["accuracy"] == pytest.approx(np.mean(fp32.argmax(1) == y))
    assert report["int8"]["accuracy"] == pytest.approx(np.mean(int8.argmax(1) == y))
    assert report["int8"]["top1_agreement"] == pytest.approx(np.mean(fp32.argmax(1) == int8.argmax(1)))

    # The output directory looks like a mkdir'd one (not the private temp dir it was staged in) and is marked.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert json.loads((out / ".compress-output").read_text())["written_by"] == "compress quantize"
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def _fake_pipeline(monkeypatch, calls: list):
    """Replace the pipeline by a recorder that writes a tiny, complete output (CLI mechanics only)."""
    import compress.pipeline

    def fake(model, calib, out_dir, options=None, *, eval_data=None, train_data=None, progress=True):
        calls.append({"model": model, "calib": calib, "options": options, "eval": eval_data, "train": train_data,
                      "progress": progress})
        (Path(out_dir) / "model.onnx").write_bytes(b"int8")
        report = {"artifacts": [{"path": str(Path(out_dir) / "model.onnx"), "format": "onnx", "bytes": 4}]}
        (Path(out_dir) / "report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr(compress.pipeline, "quantize_model", fake)
    monkeypatch.setattr(compress.pipeline, "render_summary", lambda report: "SUMMARY")


def test_options_reach_the_library_unchanged(cli, monkeypatch, tmp_path, calib_npz, write_npz, state_dict_file,
                                             tiny_arch, digits_like):
    from compress.pipeline import QuantizeOptions, Target
    from compress.quant.spec import ObserverKind

    calls: list = []
    _fake_pipeline(monkeypatch, calls)
    x, y = digits_like
    train = write_npz("train.npz", x=x[:20], y=y[:20])
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "--eval", calib_npz,
                 "--qat", "--train", train, "--epochs", "2", "--lr", "0.01", "--per-tensor", "--observer", "mse",
                 "--target", "arm", "--batch-size", "8", "-o", "out")
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["options"] == QuantizeOptions(per_tensor=True, observer=ObserverKind.MSE, target=Target.ARM, qat=True,
                                              epochs=2, lr=0.01, batch_size=8)
    np.testing.assert_array_equal(call["calib"].x, x)
    np.testing.assert_array_equal(call["train"].y, y[:20])
    assert len(call["eval"]) == len(x)
    assert call["progress"] is False  # not a terminal

    calls.clear()
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "plain")
    assert result.exit_code == 0, result.output
    assert calls[0]["options"] == QuantizeOptions() and calls[0]["eval"] is None and calls[0]["train"] is None


def test_force_replaces_a_previous_output_and_report_paths_point_at_it(cli, monkeypatch, tmp_path, calib_npz,
                                                                       state_dict_file, tiny_arch):
    calls: list = []
    _fake_pipeline(monkeypatch, calls)
    args = ["quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out"]
    assert cli(*args).exit_code == 0
    (tmp_path / "out" / "stale.txt").write_text("from the first run")
    assert cli(*args).exit_code != 0  # exists, no --force
    assert cli(*args, "--force").exit_code == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [".compress-output", "model.onnx", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["path"] == str((out / "model.onnx").resolve())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_cli_choices_match_the_library_enums():
    from compress.pipeline import Target
    from compress.quant.spec import ObserverKind

    assert OBSERVER_CHOICES == tuple(k.value for k in ObserverKind)
    assert TARGET_CHOICES == tuple(t.value for t in Target)


def test_version_and_help(cli):
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = version("edge-compress")
    except PackageNotFoundError:
        expected = "0+unknown"
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"compress {expected}"
    result = cli()
    assert result.exit_code == 0 and "quantize" in result.stdout and "demo" in result.stdout
    result = cli("quantize", "--help")
    assert result.exit_code == 0 and "--trust-pickle" in result.stdout and "--observer" in result.stdout


def test_module_entry_point_runs(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "quantize", "absent.pt", "--calib", "c.npz",
                           "-o", "out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == ["error: model file 'absent.pt' not found; check the path"]


def test_parity_failure_is_an_error_with_figures(cli, calib_npz, state_dict_file, tiny_arch, monkeypatch):
    import compress.exporters.onnx as verify

    real = verify.verify_onnx

    def broken(*args, **kwargs):
        report = real(*args, **kwargs)
        report.passed, report.within_1lsb_fraction, report.max_abs_lsb = False, 0.5, 40.0
        return report

    monkeypatch.setattr(verify, "verify_onnx", broken)
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out")
    assert result.exit_code == 6
    assert "does not match the torch simulation" in result.output and "50.0%" in result.output
    assert "Traceback" not in result.output


def test_unsupported_layer_stays_float_and_is_reported(cli, tmp_path, write_npz):
    # nn.ConvTranspose2d has int8 weights but no int8 kernel in onnxruntime: it computes in float, is listed in
    # report.json and on screen, and the rest of the model is still int8
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(1, 4, 3, padding=1)\n"
        "        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)\n"
        "        self.fc = nn.Linear(2 * 16 * 16, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(torch.flatten(self.up(torch.relu(self.conv(x))), 1))\n"
    )
    import sys

    import torch

    sys.path.insert(0, str(tmp_path))
    try:
        from net import Net
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(Net().state_dict(), tmp_path / "net.pt")
    calib = write_npz("c.npz", x=np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32))
    result = cli("quantize", "net.pt", "--arch", "net.py:Net", "--calib", str(calib), "-o", "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    up = [f for f in report["float_ops"] if f["name"] == "up"]
    assert up and "float" in up[0]["reason"]
    assert "up (QuantConvTranspose2d)" in result.stdout  # int8 weights, float compute: listed
    assert {"conv", "fc"} <= set(report["quantized_layers"])


@pytest.mark.tflite
def test_int8_io_writes_int8_tflite_edges(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    from ai_edge_litert.interpreter import Interpreter

    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "--format", "tflite",
                 "--int8-io", "-o", "out")
    assert result.exit_code == 0, result.output
    it = Interpreter(model_path=str(tmp_path / "out" / "model.tflite"))
    assert it.get_input_details()[0]["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    fp32 = Interpreter(model_path=str(tmp_path / "out" / "model_fp32.tflite"))
    assert fp32.get_input_details()[0]["dtype"] == np.float32  # the float baseline keeps float edges
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["parity"]["within_1lsb_fraction"] >= 0.99


def test_int8_io_without_tflite_is_a_usage_error(cli, calib_npz, state_dict_file, tiny_arch):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "--int8-io", "-o", "out")
    assert result.exit_code == 2 and "--format tflite" in result.output


GELU_NET = """
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
"""


def test_opset_reaches_the_int8_onnx_file(cli, tmp_path, write_npz):
    import onnx
    import torch

    (tmp_path / "gelu_net.py").write_text(GELU_NET)
    torch.manual_seed(0)
    ns: dict = {}
    exec(GELU_NET, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "gelu.pt")
    calib = write_npz("gcalib.npz", x=np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32))
    arch = f"{tmp_path / 'gelu_net.py'}:build"
    domains = {}
    for opset in ("17", "20"):
        result = cli("quantize", tmp_path / "gelu.pt", "--arch", arch, "--calib", calib, "--opset", opset,
                     "-o", f"o{opset}")
        assert result.exit_code == 0, result.output
        model = onnx.load(str(tmp_path / f"o{opset}" / "model.onnx"))
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {int(opset)}
        domains[opset] = {(n.domain, n.op_type) for n in model.graph.node if n.op_type in ("Gelu", "FastGelu")}
    assert domains["17"] and all(d == "com.microsoft" for d, _ in domains["17"])
    assert domains["20"] == {("", "Gelu")}  # the standard op: any ONNX runtime

    result = cli("quantize", tmp_path / "gelu.pt", "--arch", arch, "--calib", calib, "--opset", "20",
                 "--format", "tflite", "-o", "bad")
    assert result.exit_code == 2 and "--opset applies to the ONNX file" in result.output
    assert not (tmp_path / "bad").exists()
