"""How LiteRT runs each op of an int8 TFLite model written by ``compress.exporters.tflite`` (one line per op).

INT8: an int8 builtin kernel (or, for booleans and indices, the op on them as they are); XNNPACK also runs it
unless the line says "builtin" (comparisons, selection, ARG_MAX, GATHER, BROADCAST_TO, TILE have no XNNPACK
kernel: a graph using them has more than one delegate partition).
FLOAT: DEQUANTIZE → float op → QUANTIZE inside the graph (reported in ``float_ops``). NONE: the exporter cannot
write it: refused before calibration starts. The TFLite exporter's owner keeps this table true; ``tests/ops``
checks it against the registered emitters.
"""

from compress.ops.spec import Kernel

INT8, FLOAT, NONE = Kernel.INT8, Kernel.FLOAT, Kernel.NONE

KERNELS: dict[str, Kernel] = {
    "conv1d": INT8,
    "conv2d": INT8,
    "conv_transpose": INT8,  # TRANSPOSE_CONV (int8 for QuantConvTranspose; output padding past the full output: float)
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
    "hardtanh": FLOAT,  # MAXIMUM, MINIMUM; [0, 6] is fused RELU6
    "sigmoid": INT8,
    "tanh": INT8,
    "softmax": FLOAT,
    "log_softmax": FLOAT,  # REDUCE_MAX, SUB, EXP, SUM, LOG, SUB in float (XNNPACK has no LOG_SOFTMAX)
    "hardswish": FLOAT,
    "hardsigmoid": FLOAT,
    "gelu": FLOAT,
    "silu": INT8,  # prepare lowers it to x · sigmoid(x): LOGISTIC, MUL
    "leaky_relu": INT8,  # XNNPACK qs8 LEAKY_RELU
    "prelu": FLOAT,
    "elu": FLOAT,
    "mish": FLOAT,
    "neg": FLOAT,
    "quantize": INT8,
    "add": INT8,
    "sub": INT8,
    "mul": INT8,
    "div": FLOAT,
    "matmul": FLOAT,
    "cat": INT8,
    "where": INT8,  # builtin SELECT_V2
    "masked_fill": INT8,  # builtin SELECT_V2
    "pow": FLOAT,  # builtin POW (MUL for x ** 2)
    "cumsum": FLOAT,  # builtin, no int8 CUMSUM
    "mean": INT8,
    "sum": INT8,
    "amax": INT8,
    "max_min": INT8,  # REDUCE_MAX in XNNPACK, builtin ARG_MAX
    "argmax": INT8,  # builtin ARG_MAX
    "reshape": INT8,
    "transpose": INT8,
    "getitem": INT8,
    "split": INT8,  # SPLIT or slices
    "expand": INT8,  # builtin BROADCAST_TO / TILE
    "pad": INT8,  # PAD, or slices / constant borders + CONCATENATION
    "interpolate": INT8,  # nearest x k as CONCATENATION, other sizes builtin RESIZE_NEAREST_NEIGHBOR
    "gather": INT8,  # slices for <= 16 constant indices, else builtin GATHER / GATHER_ND
    "compare": INT8,  # builtin
    "logical": INT8,  # builtin
    "shape": INT8,
    "cast": INT8,
    "constant": INT8,  # folded into the file
    "aten": NONE,
    "exp": FLOAT,
    "log": FLOAT,
    "sqrt": FLOAT,
    "rsqrt": FLOAT,
    "abs": FLOAT,
    "reciprocal": FLOAT,
    "erf": NONE,
}
