"""Shared weights stay shared in TFLite (issue 7, item 4): identical constants are written once, so a module
called N times (prepare gives each call its own copy, sharing one weight Parameter) costs one weight buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
tflite = pytest.importorskip("tflite")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import export_tflite, verify_tflite  # noqa: E402
from compress.passes import calibrate, convert, prepare  # noqa: E402

WIDTH = 256


class Unrolled(nn.Module):
    """One linear layer applied ``steps`` times (a decoder step unrolled over time)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps
        self.step = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        for _ in range(self.steps):
            x = torch.tanh(self.step(x))
        return x


def _weight_buffers(path, nbytes: int) -> int:
    model = tflite.Model.GetRootAsModel(open(path, "rb").read(), 0)
    return sum(1 for i in range(model.BuffersLength()) if model.Buffers(i).DataLength() == nbytes)


def _int8(steps: int):
    torch.manual_seed(0)
    m = Unrolled(steps).eval()
    data = [torch.randn(2, WIDTH) for _ in range(3)]
    return convert(calibrate(prepare(m, (data[0],)), data, progress=False)), data


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "int8"])
def test_a_module_called_20_times_stores_its_weights_once(quantized, tmp_path):
    if quantized:
        (one, data), (many, _) = _int8(1), _int8(20)
    else:
        torch.manual_seed(0)
        one, many, data = Unrolled(1).eval(), Unrolled(20).eval(), [torch.randn(2, WIDTH)]
        many.load_state_dict(one.state_dict())
    nbytes = WIDTH * WIDTH * (1 if quantized else 4)
    info_one = export_tflite(one, data[0], tmp_path / "one.tflite")
    info_many = export_tflite(many, data[0], tmp_path / "many.tflite")
    assert info_many.op_counts["FULLY_CONNECTED"] == 20
    assert _weight_buffers(tmp_path / "many.tflite", nbytes) == 1
    # 20 calls cost 19 small per-call extras (int32 bias on each call's input grid, tensor tables), not 19 weights.
    assert info_many.size_bytes < info_one.size_bytes + 19 * nbytes * 0.15, (info_one.size_bytes,
                                                                             info_many.size_bytes)
    assert verify_tflite(tmp_path / "many.tflite", many, [d.numpy() for d in data], info=info_many).passed


def test_different_constants_keep_their_own_buffers(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).eval()
    path = tmp_path / "m.tflite"
    export_tflite(m, torch.randn(1, 8), path)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    assert _weight_buffers(path, 8 * 8 * 4) == 2
    assert verify_tflite(path, m, [x]).passed
