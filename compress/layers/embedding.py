"""QuantEmbedding: nn.Embedding with an int8 weight table (one scale per row).

A lookup does no arithmetic, so the int8 kernel is a gather of int8 rows followed by a dequantize (ONNX:
``DequantizeLinear(axis=0) → Gather``; TFLite: ``GATHER`` on int8). Per-row scales keep a rare token with a
large embedding from coarsening every other row. The indices are integers and are never quantized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import ConfigError
from compress.layers.base import QuantLayerMixin, check_float_type, copy_float_params
from compress.quant.config import QuantConfig, QuantMode


class QuantEmbedding(QuantLayerMixin, nn.Embedding):
    """Drop-in ``nn.Embedding`` with a fake-quantized int8 weight table (per-row, symmetric).

    Args:
        num_embeddings, embedding_dim, padding_idx: as in ``nn.Embedding``.
        config: quantization formats; the weight spec is applied along axis 0 (rows).
        quantize_io: also quantize the output vectors with an activation quantizer.

    Example:
        >>> emb = QuantEmbedding.from_float(nn.Embedding(10, 4))
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 4])
    """

    _FLOAT_MODULE = nn.Embedding
    # A lookup has no input activation: the int8 table behind a dequantize *is* the weight-only form.
    _MODES = (QuantMode.STATIC, QuantMode.WEIGHT_ONLY)

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 config: QuantConfig | None = None, quantize_io: bool = False, device=None, dtype=None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, device=device, dtype=dtype)
        self._init_quant(config or QuantConfig(), quantize_io)
        # Indices are integers: there is no input to quantize.
        self.input_quant = None

    @classmethod
    def from_float(cls, mod: nn.Embedding, config: QuantConfig | None = None, *, quantize_io: bool = False):
        """Wrap a float embedding. ``max_norm`` and ``sparse`` are refused: both act on the float table."""
        check_float_type(cls, mod)
        if mod.max_norm is not None:
            raise ConfigError(
                "nn.Embedding(max_norm=...) renormalises rows in place at lookup, which an int8 table cannot "
                "do; apply the renormalisation to the weights once and set max_norm=None before quantizing"
            )
        if mod.sparse:
            raise ConfigError("nn.Embedding(sparse=True) is not supported by QuantEmbedding; use sparse=False")
        q = cls(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, config=config, quantize_io=quantize_io,
                device=mod.weight.device, dtype=mod.weight.dtype)
        q.scale_grad_by_freq = mod.scale_grad_by_freq
        copy_float_params(q, mod)
        return q

    def to_float(self) -> nn.Embedding:
        """The float ``nn.Embedding`` with the same (unquantized) table."""
        m = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx,
                         scale_grad_by_freq=self.scale_grad_by_freq,
                         device=self.weight.device, dtype=self.weight.dtype)
        copy_float_params(m, self)
        return m

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight()
        y = F.embedding(indices, weight, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, False)
        return self._quant_output(y)
