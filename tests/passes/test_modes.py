"""Quantization modes per layer (QuantConfig.mode / layer_modes): prepare, convert and the CLI options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers import QuantLinear
from compress.passes import calibrate, convert, prepare
from compress.quant.config import QuantConfig, QuantMode
from compress.quant.fake import Quantizer


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def _converted(config: QuantConfig):
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.randn(64, 8)
    prepared = prepare(model, x[:1], config)
    calibrate(prepared, [x], progress=False)
    return model, convert(prepared), x


def _activation_quantizers(gm) -> int:
    return sum(isinstance(m, Quantizer) and not m.from_tensor for m in gm.modules())


def test_float_layer_is_not_swapped_and_is_reported():
    _, gm, _ = _converted(QuantConfig(layer_modes={"head": "float"}))
    assert type(gm.get_submodule("head")) is nn.Linear
    assert isinstance(gm.get_submodule("encoder.0"), QuantLinear)
    reasons = {f.name: f.reason for f in gm.compress_info.float_ops}
    assert reasons.get("head") == "kept in float (mode)"
    assert gm.compress_info.layer_modes == {"encoder.0": "static", "encoder.2": "static", "head": "float"}


def test_parent_path_sets_every_layer_under_it():
    _, gm, _ = _converted(QuantConfig(layer_modes={"encoder": "weight-only"}))
    assert gm.compress_info.layer_modes == {"encoder.0": "weight-only", "encoder.2": "weight-only",
                                            "head": "static"}


def test_unknown_layer_name_is_one_line_with_close_names():
    with pytest.raises(ConfigError) as err:
        _converted(QuantConfig(layer_modes={"encoder.3": "float"}))
    message = str(err.value)
    assert "\n" not in message and "encoder.3" in message and "encoder.2" in message


def test_unknown_mode_names_the_choices():
    with pytest.raises(ConfigError, match="weight-only"):
        QuantConfig(mode="int4")


def test_weight_only_model_has_no_activation_quantizers_and_float_bias():
    model, gm, x = _converted(QuantConfig(mode="weight-only"))
    assert _activation_quantizers(gm) == 0
    # Independent reference: the float net with each weight snapped to its symmetric per-row int8 grid.
    with torch.no_grad():
        ref = model
        for lin in (ref.encoder[0], ref.encoder[2], ref.head):
            w = lin.weight.numpy().astype(np.float64)
            scale = np.abs(w).max(axis=1, keepdims=True) / 127
            lin.weight.copy_(torch.from_numpy((np.round(w / scale) * scale).astype(np.float32)))
        expected = ref(x)
    torch.testing.assert_close(gm(x), expected, atol=1e-5, rtol=1e-5)


def test_dynamic_model_quantizes_layer_inputs_per_call():
    model, gm, x = _converted(QuantConfig(mode="dynamic"))
    assert _activation_quantizers(gm) == 0
    assert all(gm.get_submodule(p).mode is QuantMode.DYNAMIC for p in ("encoder.0", "encoder.2", "head"))
    # A batch scaled ×10 gets a ×10 input scale: its error is ×10 too (calibrated grids would clip instead).
    with torch.no_grad():
        err1 = (gm(x) - model(x)).abs().max()
        err10 = (gm(10 * x) - model(10 * x)).abs().max()
    assert 3 < float(err10 / err1) < 30


def test_static_layer_in_dynamic_model_keeps_its_calibrated_input():
    _, gm, _ = _converted(QuantConfig(mode="dynamic", layer_modes={"head": "static"}))
    head_input = next(n for n in gm.graph.nodes if n.target == "head").args[0]
    assert isinstance(gm.get_submodule(head_input.target), Quantizer)
    assert gm.get_submodule("head").input_scale is not None  # its bias is on the int32 grid
    assert gm.get_submodule("encoder.0").input_scale is None


def test_cli_parses_layer_modes():
    from compress.cli.quantize import LAYER_MODE_CHOICES, MODE_CHOICES, parse_layer_modes

    assert set(LAYER_MODE_CHOICES) == {m.value for m in QuantMode}
    assert set(MODE_CHOICES) < set(LAYER_MODE_CHOICES)
    assert parse_layer_modes(("a.b=dynamic",), ("c",)) == {"a.b": "dynamic", "c": "float"}
    for bad in ("a.b", "a=int4", "=float"):
        with pytest.raises(ConfigError, match="NAME=MODE"):
            parse_layer_modes((bad,))
    with pytest.raises(ConfigError, match="both"):
        parse_layer_modes(("c=static",), ("c",))


@pytest.mark.onnx
@pytest.mark.slow
def test_cli_mode_and_float_layer_end_to_end(cli, tmp_path, calib_npz, state_dict_file, tiny_arch):
    import json

    import onnx

    result = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out",
                 "--mode", "dynamic", "--float-layer", "fc", "--layer-mode", "conv1=weight-only")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["options"]["mode"] == "dynamic"
    assert report["layer_modes"] == {"stem.0": "dynamic", "conv1": "weight-only", "conv2": "dynamic",
                                     "head_conv": "dynamic", "fc": "float"}
    assert {"name": "fc", "reason": "kept in float (mode)"}.items() <= next(
        f for f in report["float_ops"] if f["name"] == "fc").items()
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= ops and "QuantizeLinear" not in ops
    assert report["parity"]["passed"]

    bad = cli("quantize", state_dict_file, "--arch", tiny_arch, "--calib", calib_npz, "-o", "out2",
              "--float-layer", "conv3")
    assert bad.exit_code == 2
    message = bad.output.strip()
    assert message.count("\n") == 0 and "conv3" in message and "conv1" in message and "Traceback" not in message
