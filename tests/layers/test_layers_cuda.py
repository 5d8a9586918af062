"""Every quant layer runs on CUDA and agrees with its CPU run (needs a GPU; skipped elsewhere)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.layers import (
    QuantAdd,
    QuantCat,
    QuantConv2d,
    QuantConvBn2d,
    QuantEmbedding,
    QuantGRU,
    QuantLayerNorm,
    QuantLinear,
    QuantLSTM,
    QuantMatmul,
    QuantMultiheadAttention,
    QuantSoftmax,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CASES = {
    "linear": (lambda: QuantLinear.from_float(nn.Linear(8, 4), quantize_io=True), lambda: (torch.randn(3, 8),)),
    "conv": (lambda: QuantConv2d.from_float(nn.Conv2d(4, 4, 3, groups=2), quantize_io=True),
             lambda: (torch.randn(2, 4, 6, 6),)),
    "conv-bn": (lambda: QuantConvBn2d.from_float(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), quantize_io=True),
                lambda: (torch.randn(2, 3, 6, 6),)),
    "embedding": (lambda: QuantEmbedding(10, 4, quantize_io=True), lambda: (torch.tensor([[1, 2, 9]]),)),
    "mha": (lambda: QuantMultiheadAttention(8, 2, batch_first=True, quantize_io=True),
            lambda: (torch.randn(2, 5, 8),) * 3),
    "lstm": (lambda: QuantLSTM(4, 6, num_layers=2, bidirectional=True, quantize_io=True),
             lambda: (torch.randn(5, 2, 4),)),
    "gru": (lambda: QuantGRU(4, 6, batch_first=True, quantize_io=True), lambda: (torch.randn(2, 5, 4),)),
    "add": (QuantAdd, lambda: (torch.randn(4), torch.randn(4))),
    "matmul": (QuantMatmul, lambda: (torch.randn(3, 4), torch.randn(4, 2))),
    "cat": (lambda: QuantCat(dim=0), lambda: ([torch.randn(2), torch.randn(3)],)),
    "softmax": (lambda: QuantSoftmax(dim=-1), lambda: (torch.randn(3, 5),)),
    "layernorm": (lambda: QuantLayerNorm(6, quantize_io=True), lambda: (torch.randn(3, 6),)),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _to(args, device):
    return tuple([t.to(device) for t in a] if isinstance(a, list) else a.to(device) for a in args)


@pytest.mark.parametrize("name", list(CASES))
def test_cuda_matches_cpu(name):
    torch.manual_seed(0)
    make, make_args = CASES[name]
    cpu = make().eval()
    args = make_args()
    with torch.no_grad():
        cpu(*args)
    cpu.freeze()
    gpu = copy.deepcopy(cpu).cuda()
    with torch.no_grad():
        y_cpu = _first(cpu(*args))
        y_gpu = _first(gpu(*_to(args, "cuda")))
    assert y_gpu.device.type == "cuda"
    # Different kernels may round a value at a grid boundary differently: allow one step of the output grid.
    lsb = float(cpu.output_quant.scale)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=0, atol=1.01 * lsb)
