"""Activation × activation matmuls (attention's Q·Kᵀ and P·V) are int8 BATCH_MATMULs inside one XNNPACK partition.

XNNPACK's int8 BATCH_MATMUL needs the right operand's zero point to be 0; the exporter rewrites an asymmetric
right operand exactly (``ops_shape._zero_point_free_rhs``). Checked here against a numpy integer reference fed
the same int8 codes, including the codes at the end of the range that the rewrite has to split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.tflite

from compress.exporters.tflite import Int8Kernels, TFLiteExportConfig, export_tflite, xnnpack_delegation  # noqa: E402
from compress.exporters.tflite.verify import load_interpreter  # noqa: E402
from compress.passes import convert, prepare  # noqa: E402
from compress.quant.fake import Quantizer  # noqa: E402


class MatMul(nn.Module):
    def __init__(self, transposed: bool):
        super().__init__()
        self.transposed = transposed

    def forward(self, a, b):
        return torch.matmul(a, b.transpose(-1, -2) if self.transposed else b)


def _quantized(m: nn.Module, batches) -> nn.Module:
    p = prepare(m, batches[0])
    with torch.no_grad():
        for b in batches:
            p(*b)
    for q in p.modules():
        if isinstance(q, Quantizer) and not q.from_tensor:
            q.start_quantizing()
    return convert(p)


def _tensor_types(path) -> dict[int, np.dtype]:
    return {int(d["index"]): d["dtype"] for d in load_interpreter(path).get_tensor_details()}


def _reference(a, b, qa, qb, qo, transposed):
    """int8 codes in, int8 codes out: the int32 accumulator of (a − za)(b − zb), rounded once onto the output grid."""
    a = a.astype(np.int64) - qa[1]
    b = b.astype(np.int64) - qb[1]
    acc = a @ (np.swapaxes(b, -1, -2) if transposed else b)
    return np.clip(np.round(acc * qa[0] * qb[0] / qo[0]) + qo[1], -128, 127)


@pytest.mark.parametrize("transposed", [False, True], ids=["a@b", "a@b.T"])
@pytest.mark.parametrize("b_shift", [1.0, -1.0], ids=["zb<0", "zb>0"])
def test_asymmetric_matmul_is_int8_in_one_xnnpack_partition(transposed, b_shift, tmp_path):
    g = torch.Generator().manual_seed(0)
    b_shape = (1, 2, 6, 5) if transposed else (1, 2, 5, 6)
    # Shifted ranges: both zero points far from 0, so the clamped end of b − zb is large.
    batches = [(torch.rand(1, 2, 4, 5, generator=g) * 3 - 0.5, torch.rand(*b_shape, generator=g) * 3 - 1.5 + b_shift)
               for _ in range(4)]
    q = _quantized(MatMul(transposed).eval(), batches)
    path = tmp_path / "mm.tflite"
    info = export_tflite(q, batches[0], path, TFLiteExportConfig(int8_io=True))

    it = load_interpreter(path)
    ops = [o for o in it._get_ops_details() if o["op_name"] == "BATCH_MATMUL"]
    types = _tensor_types(path)
    assert len(ops) == 1 and all(types[int(t)] == np.int8 for t in [*ops[0]["inputs"], *ops[0]["outputs"]]), info.op_counts
    assert "DEQUANTIZE" not in info.op_counts
    assert xnnpack_delegation(path) == {"partitions": 1, "operators": len(it._get_ops_details()) - 1, "fallback": []}

    ins, out = it.get_input_details(), it.get_output_details()[0]
    qa, qb, qo = ins[0]["quantization"], ins[1]["quantization"], out["quantization"]
    assert qb[1] != 0 and (qb[1] < 0) == (b_shift > 0)
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (1, 2, 4, 5)).astype(np.int8)
    b = rng.integers(-128, 128, b_shape).astype(np.int8)
    b.reshape(-1)[::3] = 127 if qb[1] < 0 else -128  # the codes whose b − zb leaves int8
    it.set_tensor(ins[0]["index"], a)
    it.set_tensor(ins[1]["index"], b)
    it.invoke()
    got = it.get_tensor(out["index"]).astype(np.int64)
    want = _reference(a, b, qa, qb, qo, transposed)
    assert np.abs(got - want).max() <= 1
    assert np.mean(got == want) >= 0.95


def test_builtin_kernels_keep_the_plain_asymmetric_op(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(1, 4, 5, generator=g), torch.rand(1, 5, 3, generator=g) + 1) for _ in range(3)]
    q = _quantized(MatMul(False).eval(), batches)
    info = export_tflite(q, batches[0], tmp_path / "b.tflite",
                         TFLiteExportConfig(int8_io=True, int8_kernels=Int8Kernels.BUILTIN))
    assert info.op_counts == {"BATCH_MATMUL": 1}
