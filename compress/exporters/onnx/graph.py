"""The pieces the ONNX emitters write with: a graph builder, the values an fx node maps to, and the export context.

Nothing here imports onnx at module level (``import compress`` must stay light); the builder loads it when
an export starts.

Value model: every fx node maps to one of

* :class:`TensorValue` — an ONNX tensor name, plus :class:`QParams` when the tensor is the output of a
  ``DequantizeLinear`` (it lies on that int8/uint8 grid, so quantization-preserving ops can re-emit Q/DQ);
* :class:`PyValue` — a Python constant the model computed while tracing (``x.size(0)``, ``x.shape``, an
  int derived from them), read from the shape-propagation run; ``batch_dependent`` marks values that change
  with the batch size and so cannot be baked into a dynamic-batch graph as constants (``tensor`` then names
  the int64 ONNX scalar that computes ``x.size(d)`` at run time);
* a tuple of those (a module returning several tensors, indexed by ``getitem``).
"""

from __future__ import annotations

import hashlib
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx

from compress import ops
from compress.errors import ExportError, require

# Initializers up to this many bytes are deduplicated by their bytes, larger ones by a SHA-256 of them.
_DEDUP_KEY_BYTES = 256
# Short value names: 62 of one character, 3,844 of two, ... (bijective base 62).
_NAME_CHARS = string.digits + string.ascii_letters
_GRAPH, _GRAPHS = 5, 10  # onnx.AttributeProto.GRAPH / GRAPHS (kept literal: onnx is imported lazily)

_NP_TO_ONNX = {
    np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
    np.dtype(np.int64): 7, np.dtype(np.bool_): 9, np.dtype(np.float16): 10, np.dtype(np.float64): 11,
}
_TORCH_TO_NP = {
    torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.int64: np.int64,
    torch.int32: np.int32, torch.int8: np.int8, torch.uint8: np.uint8, torch.bool: np.bool_,
}


@dataclass(frozen=True)
class QParams:
    """The grid a tensor lies on, as written in ONNX.

    ``zero_point`` is in the ONNX storage type (uint8: the quantizer's int8 zero point + 128, same grid);
    ``source_zero_point`` is the torch quantizer's own.
    """

    scale: float
    zero_point: int
    unsigned: bool
    source_zero_point: int

    @property
    def qmin(self) -> int:
        return 0 if self.unsigned else -128

    @property
    def qmax(self) -> int:
        return 255 if self.unsigned else 127

    def same_grid(self, other: QParams | None) -> bool:
        return other is not None and other == self


@dataclass(frozen=True)
class TensorValue:
    name: str
    qparams: QParams | None = None


@dataclass(frozen=True)
class PyValue:
    value: Any
    batch_dependent: bool = False
    # For a batch-dependent size (x.size(0)): an int64 ONNX scalar computing it at run time, or None.
    tensor: str | None = None


def onnx_elem_type(dtype: torch.dtype | np.dtype) -> int:
    np_dtype = np.dtype(_TORCH_TO_NP.get(dtype, dtype)) if isinstance(dtype, torch.dtype) else np.dtype(dtype)
    if np_dtype not in _NP_TO_ONNX:
        raise ExportError(f"tensor dtype {dtype} has no ONNX mapping here; cast the model and inputs to float32")
    return _NP_TO_ONNX[np_dtype]


def torch_to_numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(_TORCH_TO_NP.get(dtype, np.float32))


class GraphBuilder:
    """Accumulates nodes and initializers with unique names; knows the target opset."""

    def __init__(self, opset: int):
        self.onnx = require("onnx", "onnx")
        self.helper = self.onnx.helper
        self.numpy_helper = self.onnx.numpy_helper
        self.opset = opset
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._const_cache: dict[tuple, str] = {}
        self._producers: dict[str, Any] = {}
        self._dequantized: dict[tuple, str] = {}
        self._once: dict[tuple, str] = {}
        # hint (an fx node's name) → the first QuantizeLinear output written under it: where the file holds
        # that node's int8 output, which op-by-op verification reads (ExportInfo.probe_values).
        self.quantized_outputs: dict[str, str] = {}
        self._defaults: dict[tuple[str, str], Any] = {}

    # -- names -----------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "_.:/" else "_" for c in hint) or "t"
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def reserve(self, name: str) -> str:
        if name in self._names:
            raise ExportError(f"duplicate ONNX tensor name {name!r}; pass distinct input_names/output_names")
        self._names.add(name)
        return name

    # -- nodes and constants ---------------------------------------------------------------------------
    def node(self, op_type: str, inputs: list[str], hint: str, n_outputs: int = 1, **attrs) -> Any:
        """Append a node; returns its output name (or a list of names when ``n_outputs > 1``)."""
        outputs = [self.fresh(f"{hint}/{op_type}" if n_outputs == 1 else f"{hint}/{op_type}_{i}")
                   for i in range(n_outputs)]
        standard = attrs.get("domain") in (None, "")  # only the default domain's schemas are known here
        attrs = {k: v for k, v in attrs.items()
                 if v is not None and not (standard and k != "domain" and self._is_default(op_type, k, v))}
        made = self.helper.make_node(op_type, inputs, outputs, name=self.fresh(f"{hint}/{op_type}#"), **attrs)
        self.nodes.append(made)
        for o in outputs:
            self._producers[o] = made
        if op_type == "QuantizeLinear":
            self.quantized_outputs.setdefault(hint, outputs[0])
        return outputs[0] if n_outputs == 1 else outputs

    def _is_default(self, op_type: str, key: str, value) -> bool:
        """Whether the opset's schema gives attribute ``key`` of ``op_type`` this very value when it is left
        out (DequantizeLinear axis=1, LayerNormalization axis=-1: 10-20 bytes a node, the same graph)."""
        if (op_type, key) not in self._defaults:
            try:
                schema = self.onnx.defs.get_schema(op_type, self.opset)
                attr = schema.attributes.get(key)
                default = attr.default_value if attr is not None and attr.default_value.type else None
            except self.onnx.defs.SchemaError:  # an onnxruntime contrib op (com.microsoft): no onnx schema
                default = None
            self._defaults[(op_type, key)] = (None if default is None
                                              else self.helper.get_attribute_value(default))
        default = self._defaults[(op_type, key)]
        if default is None:
            return False
        return self.helper.get_attribute_value(self.helper.make_attribute(key, value)) == default

    def producer(self, name: str) -> Any:
        """The node this builder made that writes ``name`` (None for inputs, initializers, spliced nodes)."""
        return self._producers.get(name)

    def const(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array``; identical arrays (dtype, shape and bytes) are stored once.

        Besides small constants (scales, zero points, shapes, axes), this is what keeps shared weights shared:
        a module called N times (a decoder step, a tied embedding) becomes N graph nodes whose int8 codes are
        identical, and the file holds them once.
        """
        array = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d scales 1-d (QLinearAdd wants [])
        data = array.tobytes()
        # Small arrays are keyed by their bytes, large ones by a digest (hashing is cheap next to writing them).
        digest = data if len(data) <= _DEDUP_KEY_BYTES else hashlib.sha256(data).digest()
        key = (array.dtype.str, array.shape, digest)
        if key in self._const_cache:
            return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        self._const_cache[key] = name
        return name

    def int64s(self, values, hint: str = "const/i64") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def scalar(self, value, dtype, hint: str = "const/scalar") -> str:
        return self.const(np.asarray(value, dtype=dtype), hint)

    # -- quantization ----------------------------------------------------------------------------------
    def qparam_consts(self, qp: QParams) -> tuple[str, str]:
        scale = self.scalar(qp.scale, np.float32, "qparams/scale")
        zp = self.scalar(qp.zero_point, np.uint8 if qp.unsigned else np.int8, "qparams/zero_point")
        return scale, zp

    def quantize_dequantize(self, x: str, qp: QParams, hint: str) -> TensorValue:
        scale, zp = self.qparam_consts(qp)
        q = self.node("QuantizeLinear", [x, scale, zp], hint)
        return TensorValue(self.node("DequantizeLinear", [q, scale, zp], hint), qp)

    def dequantized_const(self, codes: np.ndarray, scale: np.ndarray, axis: int | None, hint: str) -> str:
        """An integer initializer (int8 weights / int32 bias, zero point 0) behind a DequantizeLinear."""
        codes_name = self.const(codes, f"{hint}_quantized")
        scale = np.asarray(scale, np.float32)
        scale_name = self.const(scale, f"{hint}_scale")
        # The zero point is optional (default 0): an int32 bias leaves it out, which saves 4 bytes per channel of
        # every bias (a tenth of a depthwise-heavy file); int8 weights keep it, onnxruntime's QDQ fusion reads it.
        zp_name = None if codes.dtype == np.int32 else self.const(np.zeros(scale.shape, dtype=codes.dtype),
                                                                 f"{hint}_zero_point")
        axis = axis if scale.ndim == 1 else None
        key = (codes_name, scale_name, zp_name, axis)
        if key not in self._dequantized:  # a shared weight: one initializer and one DequantizeLinear
            inputs = [codes_name, scale_name] + ([zp_name] if zp_name else [])
            self._dequantized[key] = self.node("DequantizeLinear", inputs, hint, axis=axis)
        return self._dequantized[key]

    def node_once(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        """``node`` for a pure op on a value the whole graph shares (a shared weight's reshape): written once,
        later calls with the same op, inputs and attributes read that output.

        Why: onnxruntime gives every reader of a DequantizeLinear its own copy (EnsureUniqueDQForNodeUnit), so
        a shared weight reaching its N readers through N reshapes was dequantized N times per run (the zoo GRU
        decoder's 12 calls: 590 µs of DequantizeLinear per run, 4.4× the fp32 file).
        """
        key = (op_type, tuple(inputs), tuple(sorted((k, repr(v)) for k, v in attrs.items())))
        if key not in self._once:
            self._once[key] = self.node(op_type, inputs, hint, **attrs)
        return self._once[key]

    # -- finishing -------------------------------------------------------------------------------------
    def rename_output(self, old: str, new: str) -> bool:
        """Make the node producing ``old`` write ``new`` instead (graph outputs get the user's names)."""
        producer = next((n for n in self.nodes if old in n.output), None)
        if producer is None:
            return False
        for n in self.nodes:
            for field in (n.input, n.output):
                for i, name in enumerate(field):
                    if name == old:
                        field[i] = new
        self.quantized_outputs = {k: new if v == old else v for k, v in self.quantized_outputs.items()}
        return True

    def shorten_names(self, keep: set[str]) -> dict[str, str]:
        """Give every value and initializer not in ``keep`` (the graph's inputs and outputs) a short name and
        clear node names; returns old name → new name.

        The readable names (``encoder_layer_0_intermediate_dense.weight_t_quantized``) are each written at
        every use: 34 kB of a 164 kB int8 BERT file, where 104 kB are its weights. The most used values
        (scales and zero points, read by every Q/DQ pair) get the one-character names. Body graphs (a Loop
        written by torch.onnx) keep their own names, which no new name takes, and follow the outer renames.

        Example:
            >>> b = GraphBuilder(17)
            >>> y = b.node("Relu", ["x"], "encoder.layer.0.act")
            >>> b.shorten_names({"x"}), b.nodes[0].name
            ({'encoder.layer.0.act/Relu': '0'}, '')
        """
        uses: Counter = Counter()
        local: set[str] = set()
        for n in self.nodes:
            uses.update(x for x in (*n.input, *n.output) if x)
            for body in _bodies(n):
                local |= _defined_in(body)
        for t in self.initializers:
            uses[t.name] += 1
        order = [name for name, _ in sorted(uses.items(), key=lambda kv: -kv[1]) if name not in keep]
        taken = keep | local
        names, i = {}, 0
        for old in order:
            while (new := short_name(i)) in taken:
                i += 1
            names[old] = new
            i += 1
        for t in self.initializers:
            t.name = names.get(t.name, t.name)
        for n in self.nodes:
            n.ClearField("name")  # an empty name would still be written (2 bytes a node)
            for field in (n.input, n.output):
                for j, x in enumerate(field):
                    field[j] = names.get(x, x)
            for body in _bodies(n):
                _rename_outer(body, names)
        self.quantized_outputs = {k: names.get(v, v) for k, v in self.quantized_outputs.items()}
        self._producers = {names.get(k, k): v for k, v in self._producers.items()}
        return names

    def histogram(self) -> dict[str, int]:
        return dict(sorted(Counter(n.op_type for n in self.nodes).items()))


def short_name(i: int) -> str:
    """The ``i``-th short value name: ``0``..``9``, ``a``..``z``, ``A``..``Z``, then ``00``, ``01``...

    Example:
        >>> [short_name(i) for i in (0, 10, 61, 62, 63, 62 + 62 * 62)]
        ['0', 'a', 'Z', '00', '01', '000']
    """
    chars = []
    i += 1
    while i > 0:
        i, r = divmod(i - 1, len(_NAME_CHARS))
        chars.append(_NAME_CHARS[r])
    return "".join(reversed(chars))


def _bodies(node) -> list:
    return [b for a in node.attribute for b in ([a.g] if a.type == _GRAPH else a.graphs if a.type == _GRAPHS else [])]


def _defined_in(body) -> set[str]:
    names = {i.name for i in body.input} | {i.name for i in body.initializer}
    for n in body.node:
        names.update(n.output)
        for inner in _bodies(n):
            names |= _defined_in(inner)
    return names


def _rename_outer(body, names: dict[str, str]) -> None:
    """Follow renamed outer-scope values inside a body graph (its own names never are renamed)."""
    own = _defined_in(body)
    outer = {k: v for k, v in names.items() if k not in own}
    for n in body.node:
        for j, x in enumerate(n.input):
            n.input[j] = outer.get(x, x)
        for inner in _bodies(n):
            _rename_outer(inner, outer)


class ExportContext:
    """What an op handler sees: the builder, the fx graph, recorded shapes, and the value of each node.

    ``records`` holds each node's value summary from two runs: the example inputs and (for dynamic batch)
    the same inputs with one more batch row; a dimension or int that differs between them depends on the
    batch size.
    """

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder, records: dict, probe: dict | None,
                 unsigned: bool):
        self.gm = gm
        self.b = builder
        self.records = records
        self.probe = probe
        self.unsigned = unsigned
        self.env: dict[fx.Node, Any] = {}
        self.modules: dict[str, torch.nn.Module] = dict(gm.named_modules())
        # Nodes of a quantization-preserving op whose output an emitter knows is *off* the input's grid (a
        # constant pad value between two codes): the exporter must not claim the input's qparams for them.
        self.off_grid: set[fx.Node] = set()
        # Tensors computed only from constants, folded into initializers (filled by the exporter).
        self.consts: dict[fx.Node, torch.Tensor] = {}
        # Nodes whose ONNX form computes close to, but not exactly, what the simulation does (a recurrent
        # layer's hidden state stays float in ONNX LSTM), with the reason; outputs downstream are compared
        # in float by verify_onnx.
        self.approximate: dict[fx.Node, str] = {}
        # Ops without a handler, written as float subgraphs by torch.onnx ("up (ConvTranspose2d)"), and the
        # recorded input values they are exported on (example run / one-more-row probe run).
        self.float_fallbacks: list[str] = []
        self.values: dict[fx.Node, Any] = {}
        self.probe_values: dict[fx.Node, Any] = {}

    # -- looking up values -----------------------------------------------------------------------------
    def value(self, arg):
        """fx argument → TensorValue / PyValue / tuple of them; plain Python constants become PyValue."""
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, tuple | list):
            items = [self.value(a) for a in arg]
            if all(isinstance(v, PyValue) for v in items):
                return PyValue(type(arg)(v.value for v in items), any(v.batch_dependent for v in items))
            return tuple(items)
        return PyValue(arg)

    def tensor(self, arg, node: fx.Node, like: torch.dtype | None = None) -> TensorValue:
        """The ONNX tensor for ``arg``; Python numbers become constants of dtype ``like`` (default float32)."""
        v = self.value(arg)
        if isinstance(v, TensorValue):
            return v
        if isinstance(v, PyValue) and isinstance(v.value, int | float | bool) and not v.batch_dependent:
            dtype = torch_to_numpy_dtype(like) if like is not None else np.dtype(np.float32)
            return TensorValue(self.b.scalar(v.value, dtype, f"{node.name}/const"))
        if isinstance(v, PyValue) and v.tensor is not None:
            return TensorValue(v.tensor)  # a size the graph computes (Shape → Gather), int64
        if isinstance(v, PyValue) and v.batch_dependent:
            raise ExportError(
                f"fx node {node.name!r} uses a value computed from the batch size ({v.value!r}) as tensor data; "
                "export with OnnxExportConfig(dynamic_batch=False) or compute it without x.size(0)"
            )
        raise ExportError(f"fx node {node.name!r} expects a tensor argument, got {type(v).__name__}; "
                          "rewrite the model so this argument is a tensor")

    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.gm.get_submodule(node.target)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        rec = self.records[node]
        if not isinstance(rec, TensorRecord):
            raise ExportError(f"fx node {node.name!r} produced no single tensor while tracing shapes")
        return rec.shape

    def dtype(self, node: fx.Node) -> torch.dtype:
        rec = self.records.get(node)
        return rec.dtype if isinstance(rec, TensorRecord) else torch.float32

    def probe_shape(self, node: fx.Node) -> tuple[int, ...]:
        """Shape in the probe run (one more batch row); equals :meth:`shape` without dynamic batch."""
        if self.probe is None:
            return self.shape(node)
        rec = self.probe[node]
        return rec.shape if isinstance(rec, TensorRecord) else self.shape(node)

    def dyn_dims(self, node: fx.Node) -> set[int]:
        a, b = self.shape(node), self.probe_shape(node)
        return {i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y}

    def rank(self, node_or_arg) -> int:
        return len(self.shape(node_or_arg))

    # -- shared emission helpers -----------------------------------------------------------------------
    def reshape_to_output(self, x: TensorValue, in_node: fx.Node, node: fx.Node) -> str:
        """Reshape ``x`` to ``node``'s recorded shape, keeping batch-dependent dims dynamic (0 or -1)."""
        out, out_p = self.shape(node), self.probe_shape(node)
        inp, inp_p = self.shape(in_node), self.probe_shape(in_node)
        target, inferred = [], 0
        for i, (d, dp) in enumerate(zip(out, out_p, strict=True)):
            if d == dp and d != 0:
                target.append(d)
            elif i < len(inp) and inp[i] == d and inp_p[i] == dp:
                target.append(0)  # 0 copies the input's dimension at the same index (Reshape allowzero=0)
            else:
                target.append(-1)
                inferred += 1
        if inferred > 1:
            raise ExportError(
                f"fx node {node.name!r} reshapes to {list(out)} with several batch-dependent dimensions, which one "
                "ONNX Reshape cannot express; export with OnnxExportConfig(dynamic_batch=False)"
            )
        return self.b.node("Reshape", [x.name, self.b.int64s(target)], node.name)

    def sole_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None


@dataclass(frozen=True)
class TensorRecord:
    shape: tuple[int, ...]
    dtype: torch.dtype


def summarize(value):
    """What the exporter keeps of a traced value: tensor shapes/dtypes, and Python values as they are."""
    if isinstance(value, torch.Tensor):
        return TensorRecord(tuple(value.shape), value.dtype)
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor | tuple | list) for v in value):
        return tuple(summarize(v) for v in value)
    if isinstance(value, torch.Size):
        return tuple(value)
    return value


# -- emitters: registered against the op registry (compress.ops), never in a table of our own ---------------
def emitter(*names: str, quantized: bool = False, mode: str | None = None):
    """Register ``fn(ctx, node, module_or_None) -> value`` as the ONNX emitter of each registry op in ``names``.

    ``mode``: the form of a quant layer in that ``QuantMode`` (``"dynamic"``, ``"weight-only"``).
    ``quantized``: the emitter writes the compress quant layer form (a QuantLinear node, a Quantizer); float
    emitters never see quant layers, so a quant layer without a quantized emitter is refused rather than
    written in float. Whether the op keeps its input's int8 grid is the registry's ``Policy.PRESERVING``.

    Example:
        >>> from compress import ops
        >>> ops.get("relu").emitter("onnx") is not None  # registered when the emitter modules load
        True
    """

    def register(fn):
        for name in names:
            ops.register_emitter("onnx", name, quantized=quantized, mode=mode)(fn)
        return fn

    return register


def supported_ops() -> list[str]:
    """Every module, function and tensor method the ONNX exporter writes natively (from the op registry)."""
    names: set[str] = set()
    for spec in ops.all_specs():
        if spec.emitter("onnx") is None and spec.emitter("onnx", quantized=True) is None:
            continue
        names |= {f"nn.{m.__name__}" if m.__module__.startswith("torch.nn") else m.__name__ for m in spec.modules}
        names |= {_function_name(f) for f in spec.functions}
        names |= {f"Tensor.{m}" for m in spec.methods}
    return sorted(names)


def _function_name(f) -> str:
    module = getattr(f, "__module__", None) or ""
    name = getattr(f, "__name__", repr(f))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") or module == "" else f"{module}.{name}"


_REQUIRED = object()


def arg(node: fx.Node, index: int, name: str, default=_REQUIRED):
    """Positional-or-keyword argument of an fx call (for methods, index 0 is ``self``)."""
    if len(node.args) > index:
        return node.args[index]
    if name in node.kwargs:
        return node.kwargs[name]
    if default is _REQUIRED:
        raise ExportError(f"fx node {node.name!r} ({node.target}) is missing argument {name!r}; "
                          "pass it explicitly in the model's forward")
    return default


def static(ctx: ExportContext, value, node: fx.Node):
    """A Python constant argument (dims, sizes); fx nodes holding recorded ints are resolved."""
    v = ctx.value(value)
    if isinstance(v, PyValue):
        if v.batch_dependent:
            raise ExportError(
                f"fx node {node.name!r} needs a constant but got a batch-dependent value ({v.value!r}); "
                "export with OnnxExportConfig(dynamic_batch=False)"
            )
        return v.value
    raise ExportError(f"fx node {node.name!r} needs a Python constant argument, got a tensor; "
                      "pass dims/sizes as ints")
