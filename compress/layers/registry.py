"""Which float torch.nn modules the quantization passes swap, quantize after, or leave alone.

* :data:`FLOAT_TO_QUANT` — weight-carrying layers and their quant class (the prepare pass swaps them);
* :data:`QUANTIZABLE_FLOAT_OPS` — float modules that stay float in a prepared graph but compute a new real
  value, so the pass puts a quantizer node on their output;
* :data:`QPARAM_PRESERVING_OPS` — modules whose output lies on their input's integer grid (they select or
  move values, never compute new ones): no quantizer after them. ReLU is *not* one: it changes the range,
  and its output gets its own (tighter) grid unless it is fused into the producer.

Example:
    >>> from torch import nn
    >>> quant_class_for(nn.Linear(2, 2)).__name__
    'QuantLinear'
    >>> quant_class_for(nn.ReLU()) is None
    True
"""

from __future__ import annotations

from torch import nn

from compress.layers.attention import QuantMultiheadAttention
from compress.layers.conv import QuantConv1d, QuantConv2d
from compress.layers.embedding import QuantEmbedding
from compress.layers.linear import QuantLinear
from compress.layers.recurrent import QuantGRU, QuantLSTM

FLOAT_TO_QUANT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
    nn.MultiheadAttention: QuantMultiheadAttention,
    nn.LSTM: QuantLSTM,
    nn.GRU: QuantGRU,
}

QUANTIZABLE_FLOAT_OPS: frozenset[type[nn.Module]] = frozenset({
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Softmax,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.LayerNorm,
})

QPARAM_PRESERVING_OPS: frozenset[type[nn.Module]] = frozenset({
    nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
})


def quant_class_for(module: nn.Module) -> type[nn.Module] | None:
    """The quant layer class that replaces ``module``, or None when it has none.

    Matches the exact type: a subclass of ``nn.Linear`` (a user's own layer, or one of ours) may change the
    forward, so it is not assumed to be swappable. ``nn.LSTM(proj_size>0)`` has no quant class either.

    Args:
        module: a float module.

    Returns:
        The class from :data:`FLOAT_TO_QUANT`, or None.

    Example:
        >>> from torch import nn
        >>> quant_class_for(nn.LSTM(4, 8)).__name__
        'QuantLSTM'
    """
    cls = FLOAT_TO_QUANT.get(type(module))
    if cls is QuantLSTM and getattr(module, "proj_size", 0):
        return None
    return cls
