"""TFLite export without TensorFlow: the converted torch.fx graph → a ``.tflite`` flatbuffer.

Source graph (decision): the exporter reads the **converted torch.fx GraphModule** directly — the graph
``compress.passes.convert`` returns and the ONNX exporter reads (``docs/architecture.md``, "The converted
model"). Frozen ``Quantizer`` nodes give every activation grid (scale, zero point), each quant layer's
``weight_quant`` gives the per-output-channel weight scales, and the int32 bias uses the input tensor's
scale × weight scale. A float ``nn.Module`` is traced with :func:`compress.passes.graph.trace` and exported
in float32 (BatchNorm after a conv or linear layer is folded while exporting). Reading torch rather than
ONNX keeps one source of truth for the qparams and avoids a lossy second conversion; the cost is that
ONNX files from elsewhere are not accepted (no ``compress convert``).

What is written (details in the sibling modules):

* :mod:`~compress.exporters.tflite.schema` — the flatbuffer writer (schema 3, ``TFL3``, buffer 0 empty,
  operator codes with ``builtin_code`` and ``deprecated_builtin_code``, versions as TF's converter writes);
* :mod:`~compress.exporters.tflite.layout` — NCHW → NHWC: activations stay NHWC between convolutions, a 4-D
  graph input keeps the user's NCHW layout and gets one TRANSPOSE (or is declared NHWC with
  ``nhwc_input=True``), flatten → dense permutes the dense weight columns instead of transposing;
* :mod:`~compress.exporters.tflite.ops` — the op table (conv incl. grouped and Conv1d, depthwise, dense,
  elementwise, pooling, activations, shape ops, matmul, LayerNorm as a decomposition, embedding);
* :mod:`~compress.exporters.tflite.ops_seq` — ``nn.MultiheadAttention`` as a decomposition, ``nn.LSTM`` /
  ``nn.GRU`` unrolled over time (int8 models: int8 weight tensors, float activations with the simulation's
  quantizers as QUANTIZE → DEQUANTIZE).

Int8 files are written for XNNPACK by default (:class:`Int8Kernels`): ops it has no int8 kernel for run in
float inside the delegate instead of falling back to LiteRT's builtin kernels, so a graph stays one XNNPACK
partition (``verify_tflite.xnnpack_delegation`` checks it).

Int8 models: activations int8 asymmetric per tensor, weights int8 symmetric per channel
(``quantized_dimension`` 0 for CONV_2D / FULLY_CONNECTED, 3 for DEPTHWISE_CONV_2D), bias int32. Inputs and
outputs are float32 with QUANTIZE / DEQUANTIZE at the edges unless ``int8_io=True``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch
from torch import fx, nn

from compress.errors import ConfigError, ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite import (  # noqa: F401  (they register their emitters)
    ops_conv_transpose,
    ops_dynamic,
    ops_index,
    ops_seq,
)
from compress.exporters.tflite.graph import Const, Emitter, TValue, qparams_of
from compress.exporters.tflite.ops import emitter_for
from compress.exporters.tflite.ops_math import constant_only, evaluate, fold, python_only
from compress.exporters.tflite.schema import FILE_IDENTIFIER, SCHEMA_VERSION, ModelWriter, TensorType
from compress.exporters.tflite.sparse import sparsify_weights
from compress.io.atomic import write_bytes_atomic
from compress.quant.fake import Quantizer, QuantState

_DTYPES = {torch.float32: TensorType.FLOAT32, torch.int64: TensorType.INT64, torch.int32: TensorType.INT32,
           torch.bool: TensorType.BOOL}


class Int8Kernels(str, Enum):
    """Which int8 kernels an int8 file asks LiteRT for.

    ``XNNPACK`` (default): int8 where XNNPACK (LiteRT's CPU delegate) has an int8 kernel; HARD_SWISH, GELU,
    SOFTMAX and a standalone RELU / RELU6 have none there, so they run in float between DEQUANTIZE and
    QUANTIZE and the whole graph stays one XNNPACK partition. Their int8 versions fall back to LiteRT's
    builtin kernels, one partition break each: a hard-swish CNN measured 2.4× *slower* in int8 than in
    float that way (benchmarks/results/*/tflite-latest.md). ``BUILTIN``: every op that has a TFLite int8
    kernel uses it (for int8-only targets: microcontrollers, NPUs).
    """

    XNNPACK = "xnnpack"
    BUILTIN = "builtin"


#: The int8 TFLite ops the XNNPACK delegate of ai-edge-litert 2.3 rejects (measured op by op).
#: (BATCH_MATMUL is not among them: XNNPACK runs it in int8 when the right operand's zero point is 0, which
#: the exporter arranges exactly, see ``ops_shape.matmul``.)
XNNPACK_FLOAT_OPS = frozenset({"HARD_SWISH", "GELU", "RELU", "RELU6", "SOFTMAX"})


@dataclass(frozen=True)
class TFLiteExportConfig:
    """Options of :func:`export_tflite`. Whether the model is int8 is read from the graph.

    Args:
        int8_io: int8 input and output tensors (on the model's input/output quantizer grids) instead of float32
            with QUANTIZE / DEQUANTIZE at the edges. Only for quantized models.
        nhwc_input: declare 4-D inputs as NHWC (feed ``x.permute(0, 2, 3, 1)``): saves the input TRANSPOSE.
        int8_kernels: :class:`Int8Kernels` — which ops of an int8 model use int8 kernels.
        sparse_weights: store float convolution / dense weights that are smaller in CSR form (pruned ones) as
            sparse constants read through DENSIFY (:mod:`compress.exporters.tflite.sparse`); exact, and XNNPACK
            densifies them at load time, so the graph stays one partition at the dense speed.
        description: the model's description string.

    Example:
        >>> TFLiteExportConfig(int8_io=True).int8_io
        True
    """

    int8_io: bool = False
    nhwc_input: bool = False
    int8_kernels: Int8Kernels = Int8Kernels.XNNPACK
    sparse_weights: bool = True
    description: str = "compress tflite exporter"

    def __post_init__(self):
        try:
            object.__setattr__(self, "int8_kernels", Int8Kernels(self.int8_kernels))
        except ValueError:
            raise ConfigError(f"unknown int8_kernels {self.int8_kernels!r}; choose one of: "
                              f"{', '.join(k.value for k in Int8Kernels)}") from None


@dataclass
class TFLiteExportInfo:
    """What :func:`export_tflite` wrote."""

    path: str
    quantized: bool
    int8_io: bool
    nhwc_input: bool
    schema_version: int
    size_bytes: int
    seconds: float
    op_counts: dict[str, int] = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    # The int8 grid each output was computed on (None: float) — what parity is measured in LSBs of.
    output_scales: list[float | None] = field(default_factory=list)
    # The weights stored sparse (``sparse.SparseWeight`` as dicts): name, shape, dense / sparse payload bytes.
    sparse_weights: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _as_tuple(example_inputs) -> tuple:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _graph_module(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    # A float model is captured exactly as prepare() captures the model it quantizes (torch.export first).
    from compress.passes import capture_graph

    try:
        return capture_graph(model, example_inputs)[0]
    except Exception as exc:
        raise ExportError(f"cannot export {type(model).__name__} to TFLite: {exc}") from exc


def _is_quantized(gm: fx.GraphModule) -> bool:
    quantizers = [m for m in gm.modules() if isinstance(m, Quantizer)]
    if any(q.state is not QuantState.FROZEN for q in quantizers):
        raise ExportError("the model still has unfrozen quantizers; run compress.passes.convert(model) before "
                          "exporting")
    return bool(quantizers)


def export_tflite(model: nn.Module, example_inputs, path: str | os.PathLike,
                  config: TFLiteExportConfig | None = None) -> TFLiteExportInfo:
    """Write ``model`` as a TFLite flatbuffer (float32, or full int8 when the model was converted).

    Args:
        model: a converted int8 model (``convert(calibrate(prepare(...)))``), or a float ``nn.Module``.
        example_inputs: one input batch (tensor or tuple); its shapes become the file's static shapes.
        path: the ``.tflite`` file to write (written to a temporary file, then moved into place).
        config: :class:`TFLiteExportConfig`.

    Returns:
        :class:`TFLiteExportInfo` (op counts, input/output tensors, size, time taken).

    Raises:
        ExportError: an op has no TFLite mapping (the message names the op and the node).

    Example:
        >>> from compress.models import DemoCNN
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "demo.tflite")
        >>> export_tflite(DemoCNN().eval(), torch.randn(1, 1, 8, 8), out).op_counts["CONV_2D"]
        4
    """
    config = config or TFLiteExportConfig()
    start = time.perf_counter()
    example_inputs = _as_tuple(example_inputs)
    gm = _graph_module(model, _as_tuple(example_inputs))
    quantized = _is_quantized(gm)
    if config.int8_io and not quantized:
        raise ConfigError("int8_io=True needs a quantized model; convert the model first or drop int8_io")
    gm.eval()
    _propagate_shapes(gm, example_inputs)
    # Names cost bytes (bert: 3 % of the int8 file); verification finds a value by its fx node's name
    # (``n``, or ``n_quant`` for the QUANTIZE after a float op), so those are kept and the rest dropped.
    node_names = {n.name for n in gm.graph.nodes}
    writer = ModelWriter(config.description,
                         keep_name=lambda s: s in node_names or s.removesuffix("_quant") in node_names)
    float_ops = XNNPACK_FLOAT_OPS if config.int8_kernels is Int8Kernels.XNNPACK else frozenset()
    em = Emitter(gm, writer, quantized, float_ops, xnnpack=config.int8_kernels is Int8Kernels.XNNPACK)
    inputs, outputs = _walk(em, gm, example_inputs, config)
    sparse = sparsify_weights(writer) if config.sparse_weights else []
    if sparse:
        em.op_counts["DENSIFY"] = len(sparse)
    data = writer.serialize_view([v.tensor for v in inputs], [v.tensor for v in outputs])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    return TFLiteExportInfo(
        path=str(path), quantized=quantized, int8_io=config.int8_io, nhwc_input=config.nhwc_input,
        schema_version=SCHEMA_VERSION, size_bytes=len(data), seconds=time.perf_counter() - start,
        op_counts=dict(sorted(em.op_counts.items())),
        inputs=[_describe(writer, v) for v in inputs], outputs=[_describe(writer, v) for v in outputs],
        output_scales=list(em.output_scales), sparse_weights=[asdict(w) for w in sparse],
    )


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and records each node's output shape and dtype as ``node.meta["tensor_meta"]``.

    Only shapes are needed, so with ``fast=True`` convolutions and dense layers return an uninitialised
    tensor of their output shape (computed here; the values do not matter) and quantizers / BatchNorm pass
    their input through; every other node runs for real on those stand-ins. Running ResNet-18 for real took 1.9 s of its 3.2 s conversion (first-call
    kernel set-up); torch's ShapeProp also imports sympy (1.3 s) and meta tensors import torch._dynamo (~4 s).
    """

    def __init__(self, gm: fx.GraphModule, fast: bool):
        super().__init__(gm)
        self.fast = fast

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _TensorMeta(tuple(result.shape), result.dtype)
        return result

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        x = args[0] if args else None
        if not self.fast or not isinstance(x, torch.Tensor) or kwargs or len(args) != 1:
            return super().call_module(target, args, kwargs)
        if isinstance(mod, Quantizer | nn.modules.batchnorm._BatchNorm | nn.Dropout | nn.Identity):
            return x
        if isinstance(mod, nn.Linear) and x.shape[-1] == mod.in_features:
            return torch.empty(*x.shape[:-1], mod.out_features, dtype=x.dtype)
        if isinstance(mod, nn.Conv1d | nn.Conv2d) and x.dim() == mod.weight.dim() and x.shape[1] == mod.in_channels:
            spatial = []
            for i, size in enumerate(x.shape[2:]):
                k, s, d = mod.kernel_size[i], mod.stride[i], mod.dilation[i]
                if isinstance(mod.padding, str):
                    spatial.append(size if mod.padding == "same" else (size - d * (k - 1) - 1) // s + 1)
                else:
                    spatial.append((size + 2 * mod.padding[i] - d * (k - 1) - 1) // s + 1)
            return torch.empty(x.shape[0], mod.out_channels, *spatial, dtype=x.dtype)
        return super().call_module(target, args, kwargs)


@dataclass(frozen=True)
class _TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Record every node's output shape; a model the fast path cannot run (a value-dependent op fed a
    stand-in) is run for real."""
    with torch.no_grad():
        try:
            _ShapeRecorder(gm, fast=True).run(*example_inputs)
        except Exception:
            _ShapeRecorder(gm, fast=False).run(*example_inputs)


def _describe(writer: ModelWriter, v: TValue) -> dict:
    t = writer.tensors[writer.resolve(v.tensor)]
    d = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name.lower()}
    if t.quant is not None:
        d |= {"scale": t.quant.scale[0], "zero_point": t.quant.zero_point[0]}
    return d


def _walk(em: Emitter, gm: fx.GraphModule, example_inputs: tuple, config: TFLiteExportConfig):
    inputs: list[TValue] = []
    outputs: list[TValue] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ExportError(f"the model takes {len(placeholders)} inputs but {len(example_inputs)} example inputs "
                          "were given; pass one example tensor per model input")
    for node in gm.graph.nodes:
        if node in em.values:
            continue  # folded into the op before it (fused activation, output quantizer, BatchNorm)
        if node.op == "placeholder":
            inputs.append(_placeholder(em, node, example_inputs[len(inputs)], config))
        elif node.op == "get_attr":
            em.bind(node, Const(_get_attr(gm, node.target).detach().cpu().numpy()))
        elif node.op == "output":
            outputs = [_output(em, v, config) for v in _flat(em.value(node.args[0]))]
        elif em.is_quantizer(node):
            x = em.value(node.args[0])
            if isinstance(x, TValue):
                x = em.quantize(x, qparams_of(em.module(node)), node.name)
            elif isinstance(x, Const):  # a folded constant: snap it to the grid as the simulation does
                with torch.no_grad():
                    x = Const(em.module(node)(torch.from_numpy(x.array)).numpy(), qparams_of(em.module(node)))
            em.bind(node, x)
        elif python_only(em, node):
            em.bind(node, evaluate(em, node))
        elif constant_only(em, node):
            em.bind(node, fold(em, node))
        else:
            first = node.args[0] if node.args else None
            if isinstance(first, fx.Node) and isinstance(em.values.get(first), Const):
                # an op on a folded constant and a tensor (a GRU step on a constant start token's embedding):
                # emitters take tensors, so the constant is written as one
                em.values[first] = em.materialize(em.values[first], first.name)
            emitter_for(em, node)(em, node)
    return inputs, outputs


def _placeholder(em: Emitter, node: fx.Node, example: torch.Tensor, config: TFLiteExportConfig) -> TValue:
    if not isinstance(example, torch.Tensor) or example.dtype not in _DTYPES:
        raise ExportError(f"input {node.name!r} must be a float32 or integer tensor, got "
                          f"{getattr(example, 'dtype', type(example))}")
    shape = tuple(example.shape)
    perm = L.NCHW_TO_NHWC if config.nhwc_input and len(shape) == 4 else L.identity(len(shape))
    users = list(node.users)
    if config.int8_io and len(users) == 1 and em.is_quantizer(users[0]) and example.dtype == torch.float32:
        v = em.tensor(node.name, shape, perm, TensorType.INT8, qparams_of(em.module(users[0])))
        em.bind(node, v)
        em.bind(users[0], v)
        return v
    v = em.tensor(node.name, shape, perm, _DTYPES[example.dtype])
    em.bind(node, v)
    return v


def _output(em: Emitter, v, config: TFLiteExportConfig) -> TValue:
    if not isinstance(v, TValue):
        raise ExportError(f"model output {v!r} is not a tensor; return tensors only")
    v = em.torch_order(v)
    em.output_scales.append(v.quant.scale[0] if v.is_int8 else None)
    if v.is_int8 and not config.int8_io:
        v = em.to_float(v)
    return v


def _flat(v) -> list:
    if isinstance(v, list | tuple):
        return [x for item in v for x in _flat(item)]
    if isinstance(v, dict):
        return [x for item in v.values() for x in _flat(item)]
    return [v]


def _get_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def read_file_identifier(path: str | os.PathLike) -> bytes:
    """The 4-byte flatbuffer file identifier of a ``.tflite`` file (``b"TFL3"`` for ours)."""
    with open(path, "rb") as f:
        return f.read(8)[4:8]


__all__ = ["FILE_IDENTIFIER", "XNNPACK_FLOAT_OPS", "Int8Kernels", "TFLiteExportConfig", "TFLiteExportInfo", "export_tflite", "read_file_identifier"]
