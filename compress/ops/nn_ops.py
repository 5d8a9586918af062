"""Declarations: weight layers, normalization, pooling and activations.

How each format runs an op lives in ``kernels_onnx.py`` / ``kernels_tflite.py`` (one table per exporter, so
each exporter's owner edits one file); ``tests/ops`` checks them against the registered emitters.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.layers.attention import QuantMultiheadAttention
from compress.layers.conv import QuantConv1d, QuantConv2d
from compress.layers.conv_transpose import QuantConvTranspose1d, QuantConvTranspose2d
from compress.layers.embedding import QuantEmbedding
from compress.layers.linear import QuantLinear
from compress.layers.recurrent import QuantGRU, QuantLSTM
from compress.ops.spec import Coupling, OpSpec, Policy, declare

C, P, S = Policy.COMPUTE, Policy.PRESERVING, Policy.SHAPE


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- weight layers ------------------------------------------------------------------------------------------
declare(OpSpec("conv1d", Policy.WEIGHTED, modules=(nn.Conv1d,), aten=("conv1d", "convolution"),
               quant_class=QuantConv1d, coupling=Coupling.PRODUCER))
declare(OpSpec("conv2d", Policy.WEIGHTED, modules=(nn.Conv2d,), aten=("conv2d", "convolution"),
               quant_class=QuantConv2d, coupling=Coupling.PRODUCER))
declare(OpSpec("conv_transpose", Policy.WEIGHTED, modules=(nn.ConvTranspose1d, nn.ConvTranspose2d),
               aten=("convolution",), quant_class=(QuantConvTranspose1d, QuantConvTranspose2d),
               coupling=Coupling.PRODUCER))
declare(OpSpec("linear", Policy.WEIGHTED, modules=(nn.Linear,), aten=("linear", "addmm", "mm"),
               quant_class=QuantLinear, coupling=Coupling.PRODUCER))
declare(OpSpec("embedding", Policy.WEIGHTED, modules=(nn.Embedding,), aten=("embedding",),
               quant_class=QuantEmbedding, coupling=Coupling.PRODUCER))
declare(OpSpec("multihead_attention", Policy.WEIGHTED, modules=(nn.MultiheadAttention,),
               quant_class=QuantMultiheadAttention, coupling=Coupling.HEADS))
declare(OpSpec("lstm", Policy.WEIGHTED, modules=(nn.LSTM,), aten=("lstm",), quant_class=QuantLSTM,
               coupling=Coupling.PRODUCER))
declare(OpSpec("gru", Policy.WEIGHTED, modules=(nn.GRU,), aten=("gru",), quant_class=QuantGRU,
               coupling=Coupling.PRODUCER))
declare(OpSpec("batch_norm", Policy.FOLDED, modules=(nn.BatchNorm1d, nn.BatchNorm2d),
               aten=("batch_norm", "_native_batch_norm_legit_no_training"), coupling=Coupling.PASSTHROUGH))

# -- normalization and pooling ------------------------------------------------------------------------------
declare(OpSpec("layer_norm", C, modules=(nn.LayerNorm,), functions=(F.layer_norm,), aten=("layer_norm",), coupling=Coupling.PASSTHROUGH))
declare(OpSpec("max_pool", P, modules=(nn.MaxPool1d, nn.MaxPool2d), functions=(F.max_pool1d, F.max_pool2d),
               aten=("max_pool1d", "max_pool2d"), coupling=Coupling.PASSTHROUGH))
declare(OpSpec("avg_pool", C, modules=(nn.AvgPool1d, nn.AvgPool2d), functions=(F.avg_pool2d,),
               aten=("avg_pool1d", "avg_pool2d"), coupling=Coupling.PASSTHROUGH))
declare(OpSpec("adaptive_avg_pool", C, modules=(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
               functions=(F.adaptive_avg_pool2d,), aten=("adaptive_avg_pool2d", "adaptive_avg_pool1d"),
               coupling=Coupling.PASSTHROUGH))
declare(OpSpec("dropout", P, modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity),
               functions=(F.dropout,), methods=("contiguous", "detach", "clone"), aten=("dropout", "clone"),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: x))

# -- activations --------------------------------------------------------------------------------------------
declare(OpSpec("relu", Policy.CLAMP, modules=(nn.ReLU,), functions=(torch.relu, F.relu, torch.relu_),
               methods=("relu", "relu_"), aten=("relu",), coupling=Coupling.PASSTHROUGH,
               reference=lambda x: np.maximum(x, 0)))
declare(OpSpec("relu6", Policy.CLAMP, modules=(nn.ReLU6,), functions=(F.relu6,), aten=("relu6", "hardtanh"),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: np.clip(x, 0, 6)))
declare(OpSpec("hardtanh", C, modules=(nn.Hardtanh,), functions=(F.hardtanh,), aten=("hardtanh", "clamp"),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: np.clip(x, -1, 1)))
declare(OpSpec("sigmoid", C, modules=(nn.Sigmoid,), functions=(torch.sigmoid, F.sigmoid), methods=("sigmoid",),
               aten=("sigmoid",), grid="unit", coupling=Coupling.PASSTHROUGH, reference=_sigmoid))
declare(OpSpec("tanh", C, modules=(nn.Tanh,), functions=(torch.tanh, F.tanh), methods=("tanh",), aten=("tanh",),
               grid="symmetric_unit", coupling=Coupling.PASSTHROUGH,
               reference=np.tanh))
declare(OpSpec("softmax", C, modules=(nn.Softmax,), functions=(torch.softmax, F.softmax), methods=("softmax",),
               aten=("softmax", "_softmax"), grid="unit",
               coupling=Coupling.ALONG_AXIS))
declare(OpSpec("log_softmax", C, modules=(nn.LogSoftmax,), functions=(torch.log_softmax, F.log_softmax),
               methods=("log_softmax",), aten=("log_softmax", "_log_softmax"),
               coupling=Coupling.ALONG_AXIS))
declare(OpSpec("hardswish", C, modules=(nn.Hardswish,), functions=(F.hardswish,), aten=("hardswish",), coupling=Coupling.PASSTHROUGH,
               reference=lambda x: x * np.clip(x + 3, 0, 6) / 6))
declare(OpSpec("hardsigmoid", C, modules=(nn.Hardsigmoid,), functions=(F.hardsigmoid,), aten=("hardsigmoid",), coupling=Coupling.PASSTHROUGH,
               reference=lambda x: np.clip(x / 6 + 0.5, 0, 1)))
declare(OpSpec("gelu", C, modules=(nn.GELU,), functions=(F.gelu,), aten=("gelu",),
               coupling=Coupling.PASSTHROUGH))
def _silu_as_gate(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """SiLU as ``x · sigmoid(x)``: onnxruntime (QLinearSigmoid, QLinearMul) and TFLite (LOGISTIC, MUL) run
    both halves in int8 once the sigmoid output has its own quantizer; as one op it ran in float between
    DequantizeLinear and QuantizeLinear (45 % of the zoo EfficientNet-Lite's int8 kernel time)."""
    x = node.args[0]
    with graph.inserting_before(node):
        gate = graph.create_node("call_function", torch.sigmoid, (x,), {}, name=f"{node.name}_sigmoid")
        out = graph.create_node("call_function", operator.mul, (x, gate), {}, name=f"{node.name}_mul")
    gate.meta, out.meta = dict(node.meta), dict(node.meta)  # the user's source line, for error messages
    return out


declare(OpSpec("silu", C, modules=(nn.SiLU,), functions=(F.silu,), aten=("silu",),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: x * _sigmoid(x), lowering=_silu_as_gate))
declare(OpSpec("leaky_relu", C, modules=(nn.LeakyReLU,), functions=(F.leaky_relu,), aten=("leaky_relu",), coupling=Coupling.PASSTHROUGH,
               reference=lambda x: np.where(x >= 0, x, 0.01 * x)))
declare(OpSpec("prelu", C, modules=(nn.PReLU,), aten=("prelu", "_prelu_kernel"),
               coupling=Coupling.PASSTHROUGH))
declare(OpSpec("elu", C, modules=(nn.ELU,), functions=(F.elu,), aten=("elu",),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: np.where(x > 0, x, np.expm1(x))))
declare(OpSpec("mish", C, modules=(nn.Mish,), functions=(F.mish,), aten=("mish",),
               coupling=Coupling.PASSTHROUGH, reference=lambda x: x * np.tanh(np.log1p(np.exp(x)))))
declare(OpSpec("neg", C, functions=(operator.neg, torch.neg), methods=("neg",), aten=("neg",), coupling=Coupling.PASSTHROUGH, reference=np.negative))
