"""`compress inspect` and `compress demo`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def test_inspect_lists_layers_params_and_output_shapes(cli, state_dict_file, tiny_arch, tiny_cnn):
    result = cli("inspect", state_dict_file, "--arch", tiny_arch, "--input-shape", "2,1,8,8")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.count("│") >= 5}
    # Hand-derived: 3×3 conv 1→4 channels, no bias = 36 weights; padding 1 keeps 8×8; fc 8→10 with bias = 90.
    assert rows["stem.0"] == ["Conv2d", "36", "[2, 4, 8, 8]", "QuantConv2d"]
    assert rows["pool"] == ["MaxPool2d", "0", "[2, 4, 4, 4]", "int8 passthrough"]
    assert rows["fc"] == ["Linear", "90", "[2, 10]", "QuantLinear"]
    assert rows["bn1"][3] == "folded into conv"
    total = sum(p.numel() for p in tiny_cnn.parameters())
    assert f"parameters: {total:,}" in result.stdout
    assert "add" in result.stdout  # the residual + found by tracing


def test_inspect_marks_unsupported_layers_as_float(cli, tmp_path):
    (tmp_path / "prelu_net.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.PReLU(), torch.nn.Linear(4, 2))\n"
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.PReLU(), torch.nn.Linear(4, 2))
    torch.save(net.state_dict(), tmp_path / "p.pt")
    result = cli("inspect", "p.pt", "--arch", "prelu_net.py:build")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "PReLU" in line)
    assert "stays float" in row


def test_inspect_pt2_without_arch(cli, tmp_path, tiny_cnn):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_cnn, (torch.zeros(1, 1, 8, 8),)), str(path))
    result = cli("inspect", path)
    assert result.exit_code == 0, result.output
    assert "parameters:" in result.stdout


def _fake_demo(monkeypatch, calls: list):
    import compress.demo
    import compress.pipeline

    def fake(out_dir, *, epochs, qat, progress):
        calls.append({"epochs": epochs, "qat": qat})
        (Path(out_dir) / "report.json").write_text("{}")
        return {"demo": {}}

    monkeypatch.setattr(compress.demo, "run_demo", fake)
    monkeypatch.setattr(compress.pipeline, "render_summary", lambda report: "SUMMARY")


def test_demo_replaces_its_own_output_but_nothing_else(cli, monkeypatch, tmp_path):
    calls: list = []
    _fake_demo(monkeypatch, calls)
    assert cli("demo").exit_code == 0
    marker = json.loads((tmp_path / "demo-out" / ".compress-output").read_text())
    assert marker["written_by"] == "compress demo"
    assert cli("demo", "--epochs", "2", "--qat").exit_code == 0  # its own previous output: replaced
    assert calls == [{"epochs": 6, "qat": False}, {"epochs": 2, "qat": True}]

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    result = cli("demo", "-o", other)
    assert result.exit_code == 2 and "already exists" in result.stderr
    result = cli("demo", "-o", other, "--force")
    assert result.exit_code == 2 and "not written by compress" in result.stderr
    assert (other / "notes.txt").read_text() == "keep"


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.tflite
def test_demo_end_to_end(cli, tmp_path):
    result = cli("demo", "-o", "d")
    assert result.exit_code == 0, result.output
    out = tmp_path / "d"
    report = json.loads((out / "report.json").read_text())
    assert report["demo"]["fp32_torch_accuracy"] >= 0.95
    # The bar for PTQ: int8 within 0.5 percentage points of fp32 on the held-out split.
    assert report["int8"]["accuracy"] >= report["fp32"]["accuracy"] - 0.005
    assert (out / "model.onnx").stat().st_size <= 0.45 * (out / "model_fp32.onnx").stat().st_size
    # The TFLite rows: LiteRT int8 within 0.5 pp of fp32, parity per the contract, the same bar on size.
    tfl = report["formats"]["tflite"]
    assert tfl["int8"]["accuracy"] >= tfl["fp32"]["accuracy"] - 0.005
    assert tfl["parity"]["within_1lsb_fraction"] >= 0.99
    assert tfl["int8_vs_onnx_int8"]["within_1lsb_fraction"] >= 0.99
    assert (out / "model.tflite").stat().st_size <= 0.45 * (out / "model_fp32.tflite").stat().st_size
    assert "LiteRT int8" in result.stdout
    test = np.load(out / "test.npz")
    assert len(test["y"]) == report["demo"]["test_samples"]
    # The saved float weights reload through the documented --arch route.
    from compress.io import load_model

    model = load_model(out / "demo_cnn.pt", arch=report["demo"]["arch"])
    with torch.no_grad():
        acc = float((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())
    assert acc == pytest.approx(report["demo"]["fp32_torch_accuracy"])
