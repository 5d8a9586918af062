"""QuantEmbedding and the elementwise modules (add, mul, cat, matmul) against the numpy integer reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers import (
    FloatAdd,
    FloatCat,
    FloatMatmul,
    FloatMul,
    QuantAdd,
    QuantCat,
    QuantEmbedding,
    QuantMatmul,
    QuantMul,
)
from compress.layers.base import all_quantizers
from compress.quant.reference import add_int, dequantize, matmul_int32, mul_int, quantize, requantize
from compress.quant.reference_extra import concat_int, lsb_agreement, quantize_weight


def _qp(q) -> tuple[float, int]:
    return float(q.scale), int(q.zero_point)


def _assert_parity(y: torch.Tensor, codes: np.ndarray, out_qp: tuple[float, int]) -> None:
    frac, max_lsb = lsb_agreement(y.detach().numpy(), dequantize(codes, *out_qp), out_qp[0])
    assert frac >= 0.99 and max_lsb <= 2.0, f"{frac:.4f} within 1 LSB, max {max_lsb:.2f} LSB"


# -- embedding ---------------------------------------------------------------------------------------------
def test_embedding_rows_have_their_own_scale_and_match_reference():
    torch.manual_seed(0)
    float_emb = nn.Embedding(20, 6, padding_idx=0)
    with torch.no_grad():
        float_emb.weight[3] *= 50  # one large row must not coarsen the others
    emb = QuantEmbedding.from_float(float_emb).eval()
    ids = torch.randint(0, 20, (4, 7))
    y = emb(ids)
    emb.freeze()
    wq, scale = quantize_weight(float_emb.weight.detach().numpy(), axis=0)
    np.testing.assert_allclose(emb.weight_quant.scale.numpy(), scale, rtol=1e-6)
    expected = dequantize(wq, scale, 0, axis=0)[ids.numpy()]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb(ids).detach().numpy(), expected, rtol=1e-6, atol=1e-7)  # frozen: same
    # Error per element is at most half of its own row's step.
    err = np.abs(y.detach().numpy() - float_emb(ids).detach().numpy())
    assert (err <= scale[ids.numpy()][..., None] / 2 + 1e-7).all()


def test_embedding_output_quantizer_and_round_trip():
    torch.manual_seed(1)
    float_emb = nn.Embedding(10, 4)
    emb = QuantEmbedding.from_float(float_emb, quantize_io=True).eval()
    assert emb.input_quant is None and emb.output_quant is not None
    ids = torch.arange(10)
    emb(ids)
    emb.freeze()
    y = emb(ids)
    wq, scale = quantize_weight(float_emb.weight.detach().numpy(), axis=0)
    out_qp = _qp(emb.output_quant)
    codes = quantize(dequantize(wq, scale, 0, axis=0), *out_qp, -128, 127)
    _assert_parity(y, codes, out_qp)
    back = emb.to_float()
    assert type(back) is nn.Embedding
    torch.testing.assert_close(back(ids), float_emb(ids), rtol=0, atol=0)


def test_embedding_gradients_and_refusals():
    emb = QuantEmbedding(8, 3).train()
    emb(torch.tensor([1, 2, 2])).sum().backward()
    assert emb.weight.grad[2].abs().sum() > 0 and emb.weight.grad[5].abs().sum() == 0
    with pytest.raises(ConfigError, match="max_norm"):
        QuantEmbedding.from_float(nn.Embedding(4, 2, max_norm=1.0))
    with pytest.raises(ConfigError, match="sparse"):
        QuantEmbedding.from_float(nn.Embedding(4, 2, sparse=True))


# -- elementwise -------------------------------------------------------------------------------------------
def _calibrated(module, *args):
    with torch.no_grad():
        module(*args)
    module.freeze()
    return module


def test_add_matches_reference():
    torch.manual_seed(2)
    a, b = torch.randn(4, 8), torch.randn(4, 8) * 3
    add = _calibrated(QuantAdd(), a, b)
    y = add(a, b)
    (sa, za), (sb, zb), out_qp = _qp(add.input_quants[0]), _qp(add.input_quants[1]), _qp(add.output_quant)
    codes = add_int(quantize(a.numpy(), sa, za, -128, 127), sa, za, quantize(b.numpy(), sb, zb, -128, 127), sb, zb,
                    *out_qp)
    _assert_parity(y, codes, out_qp)


def test_mul_matches_reference_with_broadcast():
    torch.manual_seed(3)
    a, b = torch.randn(4, 8), torch.rand(1, 8)
    mul = _calibrated(QuantMul(), a, b)
    y = mul(a, b)
    (sa, za), (sb, zb), out_qp = _qp(mul.input_quants[0]), _qp(mul.input_quants[1]), _qp(mul.output_quant)
    codes = mul_int(quantize(a.numpy(), sa, za, -128, 127), sa, za, quantize(b.numpy(), sb, zb, -128, 127), sb, zb,
                    *out_qp)
    _assert_parity(y, codes, out_qp)


def test_matmul_matches_reference():
    torch.manual_seed(4)
    a, b = torch.randn(2, 5, 16), torch.randn(2, 16, 3)
    mm = _calibrated(QuantMatmul(), a, b)
    y = mm(a, b)
    (sa, za), (sb, zb), out_qp = _qp(mm.input_quants[0]), _qp(mm.input_quants[1]), _qp(mm.output_quant)
    acc = matmul_int32(quantize(a.numpy(), sa, za, -128, 127), za, quantize(b.numpy(), sb, zb, -128, 127), zb)
    _assert_parity(y, requantize(acc, sa * sb, *out_qp, -128, 127, axis=None), out_qp)


def test_cat_matches_reference():
    torch.manual_seed(5)
    parts = [torch.randn(2, 3, 4), torch.randn(2, 5, 4) * 4, torch.rand(2, 1, 4)]
    cat = _calibrated(QuantCat(dim=1, num_inputs=3), parts)
    y = cat(parts)
    out_qp = _qp(cat.output_quant)
    inputs = []
    for t, q in zip(parts, cat.input_quants, strict=True):
        s, z = _qp(q)
        inputs.append((quantize(t.numpy(), s, z, -128, 127), s, z))
    _assert_parity(y, concat_int(inputs, 1, *out_qp), out_qp)


@pytest.mark.parametrize("quant_cls,float_cls,args", [
    (QuantAdd, FloatAdd, (torch.ones(3), torch.arange(3.0))),
    (QuantMul, FloatMul, (torch.ones(3) * 2, torch.arange(3.0))),
    (QuantMatmul, FloatMatmul, (torch.ones(2, 3), torch.ones(3, 2))),
])
def test_to_float_does_the_plain_op(quant_cls, float_cls, args):
    back = quant_cls().to_float()
    assert type(back) is float_cls
    expected = {FloatAdd: torch.add, FloatMul: torch.mul, FloatMatmul: torch.matmul}[float_cls](*args)
    torch.testing.assert_close(back(*args), expected)


def test_cat_to_float_and_input_count_check():
    back = QuantCat(dim=-1).to_float()
    assert isinstance(back, FloatCat) and back.dim == -1
    torch.testing.assert_close(back([torch.zeros(1, 2), torch.ones(1, 1)]), torch.tensor([[0.0, 0.0, 1.0]]))
    with pytest.raises(ConfigError, match="num_inputs=3"):
        QuantCat(dim=0)([torch.ones(1)] * 3)


def test_elementwise_gradients_flow_and_no_input_quantizers_option():
    torch.manual_seed(6)
    add = QuantAdd().train()
    a, b = torch.randn(8), torch.randn(8)
    add(a, b)
    for q in all_quantizers(add):
        q.start_quantizing()
    a.requires_grad_(True)
    add(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    bare = QuantMul(quantize_inputs=False)
    assert len(bare.input_quants) == 0 and len(all_quantizers(bare)) == 1
