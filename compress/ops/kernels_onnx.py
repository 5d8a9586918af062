"""How onnxruntime runs each op of an int8 QDQ model written by ``compress.exporters.onnx`` (one line per op).

INT8: onnxruntime fuses DequantizeLinear → op → QuantizeLinear into an integer kernel (QLinearConv, MatMulInteger,
QLinearAdd, QLinearWhere, QLinearLeakyRelu...), or drops the Q/DQ around an op that only moves int8 values
(Reshape, Transpose, Gather, Split, Expand, Tile, ReduceMax, Resize nearest; Pad is written on the int8 codes
themselves), or the op makes no real-valued activation (comparisons, argmax, sizes, constructors: nothing to
quantize). FLOAT: the op runs in float between DequantizeLinear and QuantizeLinear (reported in ``float_ops``).
NONE: the exporter cannot write it. Checked here in onnxruntime 1.32 by reading the optimized graph of
DQ → op → Q (``tests/exporters/onnx/test_kernels.py`` keeps the INT8 claims true). The ONNX exporter's owner
keeps this table true; ``tests/ops`` checks it against the registered emitters.
"""

from compress.ops.spec import Kernel

INT8, FLOAT, NONE = Kernel.INT8, Kernel.FLOAT, Kernel.NONE

KERNELS: dict[str, Kernel] = {
    "conv1d": INT8,
    "conv2d": INT8,
    "conv_transpose": FLOAT,  # onnxruntime has no int8 ConvTranspose: int8 weights (DQ), float compute
    "linear": INT8,
    "embedding": INT8,
    "multihead_attention": INT8,
    "lstm": INT8,
    "gru": INT8,
    "batch_norm": INT8,
    "layer_norm": FLOAT,
    "max_pool": INT8,
    "avg_pool": INT8,
    "adaptive_avg_pool": INT8,
    "dropout": INT8,
    "relu": INT8,
    "relu6": INT8,
    "hardtanh": INT8,
    "sigmoid": INT8,
    "tanh": FLOAT,
    "softmax": INT8,
    "log_softmax": FLOAT,
    "hardswish": FLOAT,
    "hardsigmoid": FLOAT,
    "gelu": FLOAT,
    "silu": INT8,  # prepare lowers it to x · sigmoid(x): QLinearSigmoid, QLinearMul
    "leaky_relu": INT8,
    "prelu": FLOAT,
    "elu": FLOAT,
    "mish": FLOAT,
    "neg": FLOAT,
    "quantize": INT8,
    "add": INT8,
    "sub": FLOAT,
    "mul": INT8,
    "div": FLOAT,
    "matmul": INT8,
    "cat": INT8,
    "where": INT8,
    "masked_fill": INT8,
    "pow": FLOAT,
    "cumsum": FLOAT,
    "mean": INT8,
    "sum": FLOAT,
    "amax": INT8,
    "max_min": INT8,
    "argmax": INT8,
    "reshape": INT8,
    "transpose": INT8,
    "getitem": INT8,
    "split": INT8,
    "expand": INT8,
    "pad": INT8,  # on the int8 codes (a constant off the input's grid: float, then the next quantizer)
    "interpolate": FLOAT,  # nearest is int8 in onnxruntime, bilinear float: the op is listed as float
    "gather": INT8,
    "compare": INT8,
    "logical": INT8,
    "shape": INT8,
    "cast": INT8,
    "constant": INT8,
    "aten": FLOAT,
    "exp": FLOAT,
    "log": FLOAT,
    "sqrt": FLOAT,
    "rsqrt": FLOAT,
    "abs": FLOAT,
    "reciprocal": FLOAT,
    "erf": FLOAT,
}
