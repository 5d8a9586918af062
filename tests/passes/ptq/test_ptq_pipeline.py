"""Each technique end to end through quantize_model: the ONNX and TFLite files still verify in their runtimes,
and report.json says what ran and what it changed; the CLI flag passes through."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.cli.quantize import PTQ_TECHNIQUES
from compress.io import Dataset
from compress.passes.ptq import Technique
from compress.pipeline import QuantizeOptions, quantize_model


class SmallNet(nn.Module):
    """Conv → depthwise → pointwise (CLE pairs through ReLU), then LayerNorm → linear (a SmoothQuant group)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.norm = nn.LayerNorm(4 * 6 * 6)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.head(self.norm(self.features(x).flatten(1)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.1, 3.0)
                m.running_var.uniform_(0.5, 2.0)
        net.norm.weight[[2, 50]] *= 20  # outlier channels for SmoothQuant to migrate
    return net.eval()


CASES = {  # technique (or the auto observer) → (options, what the report must show it changed)
    "cle": ({"ptq": ("cle",)}, lambda r: len(r["cle"]["pairs"]) == 2),
    "smoothquant": ({"ptq": ("smoothquant",)}, lambda r: r["smoothquant"]["groups"][0]["into"] == "layernorm norm"),
    "adaround": ({"ptq": ("adaround",)},
                 lambda r: all(x["mse_adaround"] <= x["mse_nearest"] for x in r["adaround"]["layers"])),
    "bias-correction": ({"ptq": ("bias-correction",)}, lambda r: len(r["bias_correction"]["layers"]) == 4),
    "auto": ({"observer": "auto"}, lambda r: len(r["auto_range"]["quantizers"]) > 0),
}


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.tflite
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_technique_keeps_both_exports_verified(case, tmp_path):
    options, changed = CASES[case]
    x = np.random.default_rng(0).random((48, 3, 6, 6), dtype=np.float32)
    report = quantize_model(_net(), Dataset(x), tmp_path, QuantizeOptions(
        formats=("onnx", "tflite"), latency_runs=1, **options), progress=False)
    for fmt in ("onnx", "tflite"):
        assert report["formats"][fmt]["parity"]["passed"], (fmt, report["formats"][fmt]["parity"])
    assert changed(report["ptq"]), report["ptq"]
    assert json.loads((tmp_path / "report.json").read_text())["ptq"] == json.loads(json.dumps(report["ptq"]))


def test_help_lists_every_technique_once():
    assert list(PTQ_TECHNIQUES) == [t.value for t in Technique]


@pytest.mark.slow
@pytest.mark.onnx
def test_cli_ptq_flag_reaches_the_report(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out",
                 "--ptq", "cle,bias-correction", "--observer", "auto")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["options"]["ptq"] == ["cle", "bias-correction"] and report["options"]["observer"] == "auto"
    assert {"cle", "bias_correction", "auto_range"} <= set(report["ptq"])


def test_cli_unknown_technique_is_a_config_error(cli, calib_npz, state_dict_file, tiny_arch):
    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out",
                 "--ptq", "cle,gptq")
    assert result.exit_code == 2
    assert "unknown PTQ technique" in result.output and "bias-correction" in result.output
    assert "Traceback" not in result.output
