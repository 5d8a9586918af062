"""Quantized convolutions (1-d, 2-d, grouped and depthwise) and the fused Conv+BatchNorm(+ReLU) for QAT."""

from __future__ import annotations

import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers.base import FusedActivation, QuantLayerMixin, check_float_type, copy_float_params
from compress.layers.dynamic import LayerModeMixin
from compress.quant.config import QuantConfig
from compress.quant.numerics import bn_factor, fold_bn


class _QuantConvNd(LayerModeMixin, QuantLayerMixin):
    """Shared from_float / to_float / forward of QuantConv1d and QuantConv2d."""

    def _conv_kwargs(self) -> dict:
        return dict(
            in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
            bias=self.bias is not None, padding_mode=self.padding_mode,
        )

    @classmethod
    def from_float(cls, mod: nn.Module, config: QuantConfig | None = None, *, quantize_io: bool = False):
        check_float_type(cls, mod)
        if mod.padding_mode != "zeros":
            raise ConfigError(
                f"{type(mod).__name__} with padding_mode={mod.padding_mode!r} has no int8 kernel; "
                "use padding_mode='zeros' or leave this layer in float"
            )
        q = cls(**_QuantConvNd._conv_kwargs(mod), config=config, quantize_io=quantize_io,
                device=mod.weight.device, dtype=mod.weight.dtype)
        copy_float_params(q, mod)
        return q

    def to_float(self) -> nn.Module:
        m = self._FLOAT_MODULE(**self._conv_kwargs(), device=self.weight.device, dtype=self.weight.dtype)
        copy_float_params(m, self)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._mode_input(x)
        y = self._conv_forward(x, self.quantized_weight(), self.quantized_bias())
        return self._quant_output(y)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """Drop-in ``nn.Conv1d`` simulating int8 inference (groups and depthwise included).

    Example:
        >>> QuantConv1d.from_float(nn.Conv1d(2, 4, 3))(torch.randn(1, 2, 8)).shape
        torch.Size([1, 4, 6])
    """

    _FLOAT_MODULE = nn.Conv1d

    def __init__(self, *args, config: QuantConfig | None = None, quantize_io: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(config or QuantConfig(), quantize_io)
        self._drop_io_quant_unless_static()


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """Drop-in ``nn.Conv2d`` simulating int8 inference (groups and depthwise included).

    Example:
        >>> QuantConv2d.from_float(nn.Conv2d(3, 8, 3, padding=1))(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    _FLOAT_MODULE = nn.Conv2d

    def __init__(self, *args, config: QuantConfig | None = None, quantize_io: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quant(config or QuantConfig(), quantize_io)
        self._drop_io_quant_unless_static()


class QuantConvBn2d(QuantConv2d):
    """Conv2d + BatchNorm2d trained as one int8 conv (QAT), folded into a plain QuantConv2d for export.

    During training the weight is folded with the *running* BN statistics before fake quantization (that is
    what the int8 kernel will use), and the output is rescaled so that the BN layer still normalises with
    batch statistics and keeps its running averages correct. After :meth:`freeze_bn_stats` (typically a few
    epochs before the end of QAT) the running statistics stop moving and training sees exactly the folded
    conv it will be exported as.

    Example:
        >>> fused = QuantConvBn2d.from_float(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        >>> fused.eval()(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 6, 6])
    """

    _FUSED_ACTIVATION = FusedActivation.NONE

    def __init__(self, *args, config: QuantConfig | None = None, quantize_io: bool = False, **kwargs):
        super().__init__(*args, config=config, quantize_io=quantize_io, **kwargs)
        self.bn = nn.BatchNorm2d(self.out_channels, device=self.weight.device)
        self.bn_frozen = False
        self.activation = self._FUSED_ACTIVATION

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, config: QuantConfig | None = None,
                   *, quantize_io: bool = False):
        if bn is None or type(bn) is not nn.BatchNorm2d or bn.num_features != conv.out_channels:
            raise ConfigError(f"{cls.__name__}.from_float needs the conv and a BatchNorm2d over its outputs")
        if not bn.track_running_stats or bn.running_var is None:
            raise ConfigError("BatchNorm2d without running statistics cannot be folded; use track_running_stats=True")
        q = super().from_float(conv, config, quantize_io=quantize_io)
        # Rebuild the BN with the source's options first: affine=False has no weight/bias to load.
        q.bn = nn.BatchNorm2d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                              device=conv.weight.device)
        q.bn.load_state_dict(bn.state_dict())
        return q

    def freeze(self) -> None:
        # The kernel quantizes the *folded* weight, so its scale must come from the folded weight too.
        self.weight_quant.freeze(self.folded()[0].detach())
        for q in (self.input_quant, self.output_quant):
            if q is not None:
                q.freeze()

    def freeze_bn_stats(self) -> None:
        """Stop updating BN running statistics; training then matches the exported folded conv exactly."""
        self.bn_frozen = True

    def _bn_factor(self) -> torch.Tensor:
        return bn_factor(self.bn.running_var, self.bn.eps, self.bn.weight if self.bn.affine else None)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the single conv equal to conv→BN in eval mode."""
        return fold_bn(self.weight, self.bias, self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._mode_input(x)
        weight, bias = self.folded()
        w_q = self.weight_quant(weight)
        if self.training and not self.bn_frozen:
            factor = self._bn_factor().reshape(1, -1, 1, 1)
            y = self._conv_forward(x, w_q, None) / factor
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            y = self.bn(y)
        else:
            y = self._conv_forward(x, w_q, self.quantized_bias(bias))
        return self._quant_output(y)

    def to_float(self) -> nn.Conv2d:
        """The folded float conv (BN absorbed)."""
        weight, bias = self.folded()
        kwargs = self._conv_kwargs() | {"bias": True}
        m = nn.Conv2d(**kwargs, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(weight)
            m.bias.copy_(bias)
        return m

    def to_quant_conv(self) -> QuantConv2d:
        """The folded QuantConv2d that convert() leaves in the model (BN gone, qparams carried over)."""
        conv = QuantConv2d.from_float(self.to_float(), self.qconfig)
        conv.activation = self.activation
        conv.input_quant, conv.output_quant = self.input_quant, self.output_quant
        conv.input_scale = self.input_scale
        return conv


class QuantConvBnReLU2d(QuantConvBn2d):
    """Conv2d + BatchNorm2d + ReLU as one int8 conv whose requantization clamps at zero."""

    _FUSED_ACTIVATION = FusedActivation.RELU
