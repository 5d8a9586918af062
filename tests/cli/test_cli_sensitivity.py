"""``compress quantize --max-drop / --metric / --mode auto`` and ``compress inspect --sensitivity``.

The model (tests/cli/sensitivity_net.py) is a digits MLP trained here whose ``fc1`` static int8 destroys (an
outlier weight on an always-zero pixel): the float accuracy is known from torch, the int8 file is judged in
onnxruntime with numpy, never from report.json alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli.sensitivity_net import SensitiveMLP, digits, trained_net

NET = Path(__file__).with_name("sensitivity_net.py")
ARCH = f"{NET}:SensitiveMLP"
METRIC = f"{NET}:agreement_with_labels"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The trained net's state dict and its calibration / evaluation sets."""
    return _write(tmp_path_factory.mktemp("sensitivity"), trained_net().state_dict())


@pytest.fixture(scope="module")
def untrained_files(tmp_path_factory) -> dict[str, Path]:
    """Same files, untrained weights: for the errors raised before any measurement."""
    return _write(tmp_path_factory.mktemp("untrained"), SensitiveMLP().state_dict())


def _write(root: Path, state_dict) -> dict[str, Path]:
    x, y = digits()
    torch.save(state_dict, root / "model.pt")
    np.savez(root / "calib.npz", x=x[:256])
    np.savez(root / "eval.npz", x=x[1200:], y=y[1200:])
    return {"model": root / "model.pt", "calib": root / "calib.npz", "eval": root / "eval.npz"}


def _onnx_accuracy(path: Path) -> float:
    import onnxruntime as ort

    x, y = digits()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(1200, len(x))])
    return float(np.mean(logits.argmax(1) == y[1200:]))


def _fp32_accuracy(outlier: bool = True) -> float:
    x, y = digits()
    with torch.no_grad():
        logits = trained_net(outlier=outlier)(torch.from_numpy(x[1200:])).numpy()
    return float(np.mean(logits.argmax(1) == y[1200:]))


@pytest.mark.slow
@pytest.mark.onnx
def test_max_drop_keeps_the_destroyed_layer_float_and_the_file_within_budget(cli, tmp_path, files):
    # All static, fc1's weights round to zero and the model guesses (tests/passes/test_sensitivity.py measures it).
    result = cli("quantize", files["model"], "--arch", ARCH, "--calib", files["calib"], "--eval", files["eval"],
                 "--max-drop", "1", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    section = report["sensitivity"]
    assert section["layer_modes"] == {"fc1": "float"}
    assert report["options"]["layer_modes"] == {"fc1": "float"}
    rows = {r["layer"]: r for r in section["layers"]}
    assert set(rows) == {"fc1", "fc2", "fc3"} and rows["fc1"]["mode"] == "float"
    assert rows["fc1"]["gain_pp"] > 50 and rows["fc1"]["gain_pp"] == max(r["gain_pp"] for r in rows.values())
    assert "sensitivity" in result.stdout and "fc1" in result.stdout
    fp32, int8 = _fp32_accuracy(), _onnx_accuracy(tmp_path / "out" / "model.onnx")
    assert fp32 > 0.85
    assert 100 * (fp32 - int8) <= 1.0, (fp32, int8)


@pytest.mark.slow
@pytest.mark.onnx
def test_mode_auto_writes_a_dynamic_file_where_static_cannot_hold(cli, tmp_path):
    # One corrupted calibration sample (pixel 0 = 1000) stretches the static input grid past every real pixel.
    x, y = digits()
    torch.save(trained_net(outlier=False).state_dict(), tmp_path / "model.pt")
    cx = x[:128].copy()
    cx[0, 0] = 1000.0
    np.savez(tmp_path / "calib.npz", x=cx)
    np.savez(tmp_path / "eval.npz", x=x[1200:], y=y[1200:])
    result = cli("quantize", tmp_path / "model.pt", "--arch", ARCH, "--calib", tmp_path / "calib.npz", "--eval",
                 tmp_path / "eval.npz", "--mode", "auto", "--no-measure", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["sensitivity"]["mode"] == "dynamic" and report["options"]["mode"] == "dynamic"
    assert report["sensitivity"]["latency"]["ladder"] == "prior"  # --no-measure: the prior's next base, dynamic
    assert 100 * (report["sensitivity"]["fp32"] - report["sensitivity"]["quantized"]) <= 1.0
    fp32 = _fp32_accuracy(outlier=False)
    assert 100 * (fp32 - _onnx_accuracy(tmp_path / "out" / "model.onnx")) <= 1.0


@pytest.mark.slow
def test_inspect_sensitivity_prints_the_table_with_a_custom_metric_and_writes_nothing(cli, tmp_path, files):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("inspect", files["model"], "--arch", ARCH, "--sensitivity", "--calib", files["calib"],
                 "--eval", files["eval"], "--metric", METRIC, "--max-drop", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "agreement_with_labels" in out
    table = out[out.index("sensitivity ("):].splitlines()  # after inspect's own layer table
    rows = {name: next(line for line in table if f" {name} " in line) for name in ("fc1", "fc2", "fc3")}
    assert "float" in rows["fc1"] and all("static" in rows[k] and "float" not in rows[k] for k in ("fc2", "fc3"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args, needle", [
    (["--max-drop", "1", "--metric", "nosuchmodule_xyz:fn"], "nosuchmodule_xyz"),
    (["--max-drop", "1", "--metric", "top5"], "unknown metric"),
    (["--metric", "cosine"], "--max-drop"),
    (["--max-drop", "-1"], "-1"),
])
def test_bad_metric_or_budget_is_one_line_exit_2(cli, tmp_path, untrained_files, args, needle):
    files = untrained_files
    result = cli("quantize", files["model"], "--arch", ARCH, "--calib", files["calib"], *args, "-o", tmp_path / "o")
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_inspect_sensitivity_needs_calibration_data(cli, untrained_files):
    files = untrained_files
    result = cli("inspect", files["model"], "--arch", ARCH, "--sensitivity")
    assert result.exit_code == 2 and "--calib" in result.stderr


def test_help_lists_auto_and_the_budget(cli):
    text = cli("quantize", "--help").output
    assert "auto" in text and "--max-drop" in text and "--metric" in text
    assert "--sensitivity" in cli("inspect", "--help").output
