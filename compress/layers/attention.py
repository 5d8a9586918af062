"""QuantMultiheadAttention: nn.MultiheadAttention with int8 projections and int8 attention matmuls.

What an int8 runtime executes, and where this layer quantizes:

* in-projections ``q = x Wq^T + bq`` (and k, v): int8 weights, one symmetric quantizer per projection in
  ``weight_quants`` (``q_proj_weight`` / ``k_proj_weight`` / ``v_proj_weight``; for the packed
  ``in_proj_weight`` these are its three row blocks), biases on the int32 grid;
* ``Q·K^T``: both operands int8 — ``q_quant`` (q already multiplied by 1/sqrt(head_dim), so the scores need
  no extra rescale) and ``k_quant``;
* softmax in float, its probabilities quantized by ``attn_quant`` (the observed range is [0, 1], so the
  asymmetric int8 grid spends all 256 codes on it);
* ``P·V``: int8 probabilities times ``v_quant(v)``;
* out-projection: ``out_proj`` is a :class:`~compress.layers.QuantLinear` whose ``input_quant`` quantizes
  the attention context (an internal edge no graph pass can see).

``input_quant`` / ``key_input_quant`` / ``value_input_quant`` and ``output_quant`` exist only with
``quantize_io=True`` (standalone use); in prepared graphs the neighbouring quantizer nodes do that job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.layers.base import (
    FusedActivation,
    QuantLayerMixin,
    check_float_type,
    copy_float_params,
    fake_quantize_bias,
)
from compress.layers.linear import QuantLinear
from compress.quant.config import QuantConfig, QuantMode
from compress.quant.fake import Quantizer, QuantState

_PROJ = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


def _known_scale(q: nn.Module | None) -> torch.Tensor | None:
    if isinstance(q, Quantizer) and q.state is not QuantState.OBSERVING:
        return q.scale.detach()
    return None


def _maybe(q: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    return q(x) if q is not None else x


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (True = may not attend) or a float mask, as the float term added to the scores."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class QuantMultiheadAttention(QuantLayerMixin, nn.MultiheadAttention):
    """Drop-in ``nn.MultiheadAttention`` simulating int8 inference.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first: as in
            ``nn.MultiheadAttention``.
        config: quantization formats.
        quantize_io: also quantize query/key/value inputs and the output (standalone use).

    Example:
        >>> mha = QuantMultiheadAttention.from_float(nn.MultiheadAttention(8, 2, batch_first=True))
        >>> x = torch.randn(2, 5, 8)
        >>> out, weights = mha(x, x, x)
        >>> out.shape, weights.shape
        (torch.Size([2, 5, 8]), torch.Size([2, 5, 5]))
    """

    _FLOAT_MODULE = nn.MultiheadAttention

    # No dynamic form (the attention emitters have no per-call quantization): prepare writes a dynamic
    # attention layer weight-only, which keeps its accuracy at fp32's.
    _MODES = (QuantMode.STATIC, QuantMode.WEIGHT_ONLY)

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, *, config: QuantConfig | None = None,
                 quantize_io: bool = False, device=None, dtype=None):
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device=device, dtype=dtype)
        config = config or QuantConfig()
        self.qconfig = config
        self.activation = FusedActivation.NONE
        self.register_buffer("input_scale", None)
        float_out = self.out_proj
        self.out_proj = QuantLinear(embed_dim, embed_dim, float_out.bias is not None, config=config,
                                    device=float_out.weight.device, dtype=float_out.weight.dtype)
        copy_float_params(self.out_proj, float_out)
        self.weight_quants = nn.ModuleDict({name: config.weight_quantizer(0) for name in _PROJ})
        # Weight-only: int8 projection weights, every activation (and the attention arithmetic) float.
        static = getattr(config, "mode", QuantMode.STATIC) is QuantMode.STATIC

        def act():
            return config.activation_quantizer() if static else None

        self.out_proj.input_quant = act()
        self.input_quant, self.key_input_quant, self.value_input_quant, self.output_quant = (
            act() if quantize_io else None for _ in range(4))
        self.q_quant, self.k_quant, self.v_quant, self.attn_quant = (act() for _ in range(4))

    # -- conversions -----------------------------------------------------------------------------------
    def _mha_kwargs(self) -> dict:
        return dict(embed_dim=self.embed_dim, num_heads=self.num_heads, dropout=self.dropout,
                    bias=self.in_proj_bias is not None, add_bias_kv=self.bias_k is not None,
                    add_zero_attn=self.add_zero_attn, kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first)

    @classmethod
    def from_float(cls, mod: nn.MultiheadAttention, config: QuantConfig | None = None, *,
                   quantize_io: bool = False):
        check_float_type(cls, mod)
        w = mod.out_proj.weight
        q = cls(**QuantMultiheadAttention._mha_kwargs(mod), config=config, quantize_io=quantize_io,
                device=w.device, dtype=w.dtype)
        copy_float_params(q, mod)
        copy_float_params(q.out_proj, mod.out_proj)
        return q

    def to_float(self) -> nn.MultiheadAttention:
        w = self.out_proj.weight
        m = nn.MultiheadAttention(**self._mha_kwargs(), device=w.device, dtype=w.dtype)
        copy_float_params(m, self)
        copy_float_params(m.out_proj, self.out_proj)
        return m

    def freeze(self) -> None:
        """Fix every qparam (convert): weight scales from the final weights, observers dropped."""
        for name, w in zip(_PROJ, self._float_proj_weights(), strict=True):
            if isinstance(self.weight_quants[name], Quantizer):
                self.weight_quants[name].freeze(w.detach())
        self.out_proj.freeze()
        for q in (self.input_quant, self.key_input_quant, self.value_input_quant, self.output_quant,
                  self.q_quant, self.k_quant, self.v_quant, self.attn_quant):
            if isinstance(q, Quantizer):
                q.freeze()

    # -- pieces the forward and the exporters share ---------------------------------------------------
    def _float_proj_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._qkv_same_embed_dim:
            return tuple(self.in_proj_weight.chunk(3, dim=0))  # type: ignore[return-value]
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """The q / k / v projection weights as the int8 kernel sees them, by name."""
        return {name: self.weight_quants[name](w) for name, w in zip(_PROJ, self._float_proj_weights(), strict=True)}

    def _scale_or_buffer(self, q: nn.Module | None) -> torch.Tensor | None:
        scale = _known_scale(q)
        return self.input_scale if scale is None else scale

    def _proj_biases(self, scales) -> list[torch.Tensor | None]:
        if self.in_proj_bias is None:
            return [None, None, None]
        biases = []
        for name, b, s_in in zip(_PROJ, self.in_proj_bias.chunk(3), scales, strict=True):
            s_w = _known_scale(self.weight_quants[name])
            biases.append(b if s_in is None or s_w is None else fake_quantize_bias(b, s_in, s_w))
        return biases

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt_len, bsz, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim

        query = _maybe(self.input_quant, query)
        key = _maybe(self.key_input_quant, key)
        value = _maybe(self.value_input_quant, value)
        in_scales = (self.known_input_scale(), self._scale_or_buffer(self.key_input_quant),
                     self._scale_or_buffer(self.value_input_quant))
        w_q, w_k, w_v = self.quantized_weights().values()
        b_q, b_k, b_v = self._proj_biases(in_scales)
        q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

        attn_mask = _additive(attn_mask, q.dtype)
        key_padding_mask = _additive(key_padding_mask, q.dtype)
        if is_causal and attn_mask is None:
            causal = torch.ones(tgt_len, key.shape[0], dtype=torch.bool, device=q.device).triu(1)
            attn_mask = _additive(causal, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))

        # [L, N, E] -> [N*H, L, head_dim], the layout of nn.MultiheadAttention's batched matmuls.
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz * heads, 1, head_dim)], dim=1)
            v = torch.cat([v, v.new_zeros(bsz * heads, 1, head_dim)], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]

        q = _maybe(self.q_quant, q * head_dim**-0.5)
        k, v = _maybe(self.k_quant, k), _maybe(self.v_quant, v)
        scores = torch.bmm(q, k.transpose(1, 2))
        if attn_mask is not None:
            scores = scores + attn_mask  # [L, S] broadcasts; [N*H, L, S] adds per head
        if key_padding_mask is not None:
            kpm = key_padding_mask.reshape(bsz, 1, 1, src_len).expand(bsz, heads, 1, src_len)
            scores = scores + kpm.reshape(bsz * heads, 1, src_len)
        probs = _maybe(self.attn_quant, torch.softmax(scores, dim=-1))
        dropped = F.dropout(probs, self.dropout, training=True) if self.training and self.dropout > 0 else probs
        context = torch.bmm(dropped, v).transpose(0, 1).reshape(tgt_len, bsz, self.embed_dim)
        out = _maybe(self.output_quant, self.out_proj(context))

        weights = None
        if need_weights:
            weights = probs.reshape(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        if not batched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
