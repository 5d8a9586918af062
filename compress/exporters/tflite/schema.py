"""A small TFLite flatbuffer writer on top of the ``flatbuffers`` package and the ``tflite`` schema classes.

No TensorFlow: :class:`ModelWriter` collects buffers, tensors, operator codes and operators in plain Python
and :meth:`ModelWriter.serialize` lays them out with the generated builder functions of the ``tflite`` package
(schema version 3, file identifier ``TFL3``).

Conventions that follow what TF's converter writes (LiteRT relies on some of them):

* buffer 0 is the empty sentinel; every tensor without data points at it; identical constants (same dtype,
  shape and bytes) share one buffer, so shared weights are stored once;
* buffer payloads are aligned to 16 bytes (kernels and XNNPACK read weights in place), those under 64 bytes
  to 8 (their int32 / int64 elements);
* an operator code carries both ``builtin_code`` and ``deprecated_builtin_code`` (the latter saturates at
  127, ``PLACEHOLDER_FOR_GREATER_OP_CODES``, for the codes added after the int8 field ran out);
* an operator code's version is the highest version any of its operators needs (see ``tflite_ops.op_version``);
* a sparse constant (:class:`SparseDims`, written as ``SparsityParameters``) has its own buffer holding only the
  stored elements and is read through a DENSIFY placed before every other operator (``sparse.sparsify_weights``);
* with ``keep_name``, only the tensors it accepts (and the subgraph's inputs and outputs) carry their name:
  the exporter keeps the names verification reads (a tensor named after the fx node whose value it holds)
  and drops the rest (constants, layout and domain copies, a decomposition's steps), which LiteRT reads as
  ``""``. Zoo bert's int8 file carried 4,913 name characters (3 % of it) for 196 tensors.

The heavy packages are imported when a writer is created, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from compress.errors import require

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
# Codes above this did not fit the original int8 ``deprecated_builtin_code`` field.
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127
_BUFFER_ALIGNMENT = 16
_SMALL_BUFFER = 64  # bytes; smaller payloads are aligned to 8 only


class TensorType(IntEnum):
    """The ``tflite.TensorType`` values this exporter writes."""

    FLOAT32 = 0
    INT32 = 2
    UINT8 = 3
    INT64 = 4
    BOOL = 6
    INT8 = 9


_NUMPY_OF = {
    TensorType.FLOAT32: np.float32, TensorType.INT32: np.int32, TensorType.UINT8: np.uint8,
    TensorType.INT64: np.int64, TensorType.BOOL: np.bool_, TensorType.INT8: np.int8,
}


def numpy_dtype(tensor_type: TensorType) -> np.dtype:
    return np.dtype(_NUMPY_OF[tensor_type])


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one tensor: ``real = scale · (q − zero_point)``.

    ``scale`` / ``zero_point`` have one element (per tensor) or one per slice along ``axis`` (per channel,
    written as ``quantized_dimension``).
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    @staticmethod
    def per_tensor(scale: float, zero_point: int) -> QuantParams:
        return QuantParams((float(scale),), (int(zero_point),))

    @staticmethod
    def per_channel(scale, zero_point, axis: int) -> QuantParams:
        scale = np.asarray(scale, np.float64).reshape(-1)
        zp = np.broadcast_to(np.asarray(zero_point, np.int64).reshape(-1), scale.shape)
        return QuantParams(tuple(float(s) for s in scale), tuple(int(z) for z in zp), axis)

    @property
    def is_per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class Options:
    """The builtin options table of one operator: the schema table name and its fields.

    ``fields`` maps the schema's CamelCase field names (as in ``tflite.<Name>Add<Field>``) to values; a list
    value is written as an int32 vector.

    Example:
        >>> Options("Conv2DOptions", {"Padding": 1, "StrideW": 2, "StrideH": 2}).name
        'Conv2DOptions'
    """

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SparseDims:
    """A constant stored compactly (``tflite.SparsityParameters``), traversed in the tensor's own dimension order.

    ``dims`` has one entry per dimension: an ``int`` (DENSE: every position of that size is stored) or a pair
    ``(segments, indices)`` (SPARSE_CSR: the stored positions of each parent position ``p`` are
    ``indices[segments[p]:segments[p + 1]]``). The buffer then holds only the stored elements, in traversal
    order; LiteRT's DENSIFY expands it (:mod:`compress.exporters.tflite.sparse` builds these).
    """

    dims: tuple[int | tuple[np.ndarray, np.ndarray], ...]


@dataclass
class TensorDef:
    name: str
    shape: tuple[int, ...]
    dtype: TensorType
    buffer: int = 0
    quant: QuantParams | None = None
    variable: bool = False  # state a stateful kernel reads and writes (UNIDIRECTIONAL_SEQUENCE_LSTM's h and c)
    sparsity: SparseDims | None = None  # the buffer holds only the stored elements (see SparseDims)


@dataclass
class OperatorDef:
    opcode_index: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options | None = None

    def _replace_io(self, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> OperatorDef:
        return OperatorDef(self.opcode_index, inputs, outputs, self.options)


def _options_key(options: Options | None) -> tuple | None:
    if options is None:
        return None
    return options.name, tuple((k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in options.fields.items())


class ModelWriter:
    """Accumulates one subgraph and writes it as a ``.tflite`` flatbuffer.

    Example:
        >>> w = ModelWriter()
        >>> x = w.add_tensor("x", (1, 4), TensorType.FLOAT32)
        >>> y = w.add_tensor("y", (1, 4), TensorType.FLOAT32)
        >>> w.add_operator("RELU", [x], [y])
        True
        >>> w.serialize([x], [y])[4:8]
        b'TFL3'
    """

    def __init__(self, description: str = "compress", keep_name: Callable[[str], bool] | None = None):
        self._tflite = require("tflite", "tflite")
        self._flatbuffers = require("flatbuffers", "tflite")
        self.description = description
        self.keep_name = keep_name  # None: every tensor keeps its name
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel
        self.tensors: list[TensorDef] = []
        self.operators: list[OperatorDef] = []
        self.opcodes: list[list[int]] = []  # [builtin_code, version]
        self._opcode_index: dict[int, int] = {}
        self._names: set[str] = set()
        self._buffer_index: dict[tuple, int] = {}  # (dtype, shape, bytes) → buffer: each payload stored once
        self._constant_index: dict[tuple, int] = {}  # (buffer, shape, dtype, quant) → constant tensor
        self._operator_index: dict[tuple, int] = {}  # an operator's identity → its position (repeats are skipped)
        self._alias: dict[int, int] = {}  # output of a skipped repeat → the earlier operator's output

    # -- building --------------------------------------------------------------------------------------
    def builtin_code(self, op_name: str) -> int:
        code = getattr(self._tflite.BuiltinOperator, op_name, None)
        if code is None:
            raise ValueError(f"unknown TFLite builtin operator {op_name!r}")
        return int(code)

    def op_name(self, opcode_index: int) -> str:
        """The builtin operator name of an operator code index (``OperatorDef.opcode_index``)."""
        code = self.opcodes[opcode_index][0]
        return next(k for k, v in vars(self._tflite.BuiltinOperator).items() if v == code and not k.startswith("_"))

    def add_tensor(self, name: str, shape, dtype: TensorType, data: np.ndarray | None = None,
                   quant: QuantParams | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given); returns its index."""
        buffer = 0
        if data is not None:
            arr = np.asarray(data, dtype=numpy_dtype(dtype))
            arr = np.ascontiguousarray(arr) if arr.ndim else arr  # ascontiguousarray makes a scalar 1-d
            if tuple(arr.shape) != tuple(int(d) for d in shape):
                raise ValueError(f"constant {name!r} has shape {arr.shape}, declared {tuple(shape)}")
            payload = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            # Identical constants share one buffer: a module called N times (a decoder step unrolled, a tied
            # embedding) writes its weights once, not N times.
            key = (dtype, arr.shape, payload)
            buffer = self._buffer_index.get(key, 0)
            if not buffer:
                self.buffers.append(payload)
                buffer = self._buffer_index[key] = len(self.buffers) - 1
        if buffer:  # the same constant on the same grid is one tensor (a weight read by each of N calls)
            key = (buffer, tuple(int(d) for d in shape), dtype, quant)
            if key in self._constant_index:
                return self._constant_index[key]
        self.tensors.append(TensorDef(self._unique(name), tuple(int(d) for d in shape), dtype, buffer, quant))
        if buffer:
            self._constant_index[key] = len(self.tensors) - 1
        return len(self.tensors) - 1

    def add_operator(self, op_name: str, inputs, outputs, options: Options | None = None,
                     version: int = 1) -> bool:
        """Append an operator (False: it repeated an earlier one); ``-1`` in ``inputs`` marks an omitted optional
        input.

        An operator equal to one already written (same code, version, inputs and options, outputs of the same
        shape, type and grid) is not written again: its outputs become aliases of the earlier ones, and later
        operators read those. Kernels are deterministic, so the values are the same bits; a decoder unrolled
        over time dequantized its embedding table once per step, and a value packed for two consumers was
        packed and quantized twice (zoo gru_seq2seq). Always written: operators touching variable tensors, and
        those with an output that keeps its name (see ``keep_name``: verification reads that node's value there).
        """
        inputs = tuple(self._alias.get(int(i), int(i)) for i in inputs)
        outputs = tuple(int(o) for o in outputs)
        code = self.builtin_code(op_name)
        key = None
        if outputs and not any(self.tensors[t].variable for t in (*inputs, *outputs) if t >= 0):
            key = (code, version, inputs, _options_key(options),
                   tuple((self.tensors[o].shape, self.tensors[o].dtype, self.tensors[o].quant) for o in outputs))
            earlier = self._operator_index.get(key)
            # An output that keeps its name is what verification finds a node's value by: written anyway.
            if earlier is not None and not any(self._named(self.tensors[o]) for o in outputs):
                self._alias.update(zip(outputs, self.operators[earlier].outputs, strict=True))
                return False
        if code not in self._opcode_index:
            self._opcode_index[code] = len(self.opcodes)
            self.opcodes.append([code, version])
        idx = self._opcode_index[code]
        self.opcodes[idx][1] = max(self.opcodes[idx][1], version)
        if key is not None:
            self._operator_index[key] = len(self.operators)
        self.operators.append(OperatorDef(idx, inputs, outputs, options))
        return True

    def add_sparse_constant(self, name: str, shape, dtype: TensorType, values: np.ndarray, sparsity: SparseDims,
                            quant: QuantParams | None = None) -> int:
        """A constant of ``shape`` whose buffer holds only ``values`` (the stored elements, see :class:`SparseDims`);
        it is read through a DENSIFY operator. Never shared with a dense constant of the same bytes."""
        payload = np.ascontiguousarray(values, numpy_dtype(dtype)).astype(numpy_dtype(dtype).newbyteorder("<")).tobytes()
        self.buffers.append(payload)
        self.tensors.append(TensorDef(self._unique(name), tuple(int(d) for d in shape), dtype, len(self.buffers) - 1,
                                      quant, sparsity=sparsity))
        return len(self.tensors) - 1

    def prepend_operator(self, op_name: str, inputs, outputs, options: Options | None = None, version: int = 1) -> None:
        """Insert an operator before all others (a DENSIFY of a constant: it must run before its consumer);
        never deduplicated."""
        self.add_operator(op_name, [], [], options, version)  # registers the code; an output-less op is kept
        self.operators.insert(0, self.operators.pop()._replace_io(tuple(inputs), tuple(outputs)))
        self._operator_index = {k: i + 1 for k, i in self._operator_index.items()}

    def resolve(self, tensor: int) -> int:
        """The tensor that holds ``tensor``'s value in the file (itself, unless its operator was a repeat)."""
        return self._alias.get(int(tensor), int(tensor))

    def _unique(self, name: str) -> str:
        base, i = name or "t", 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    # -- serialization ---------------------------------------------------------------------------------
    def serialize(self, inputs, outputs) -> bytes:
        """The model as flatbuffer bytes, with ``inputs`` / ``outputs`` as the subgraph's tensors."""
        return bytes(self.serialize_view(inputs, outputs))

    def serialize_view(self, inputs, outputs) -> memoryview:
        """:meth:`serialize` without the final copy: a view of the builder's buffer (write it to a file)."""
        tfl = self._tflite
        # Room for payloads, their alignment padding and the tables: a builder that has to grow copies
        # everything (0.14 s of ResNet-18's 47 MB).
        size = sum(len(x) + _BUFFER_ALIGNMENT + 16 for x in self.buffers)
        size += 512 * (len(self.tensors) + len(self.operators)) + (1 << 16)
        b = self._flatbuffers.Builder(size)
        # Only tensors some operator or the signature uses are written (a skipped repeat's outputs are not),
        # and only buffers those tensors use; indices are renumbered densely.
        inputs, outputs = [self.resolve(i) for i in inputs], [self.resolve(o) for o in outputs]
        used = {*inputs, *outputs, *(t for op in self.operators for t in (*op.inputs, *op.outputs) if t >= 0)}
        live = [i for i in range(len(self.tensors)) if i in used]
        t_index = {t: k for k, t in enumerate(live)}
        t_index[-1] = -1
        live_buffers = sorted({0, *(self.tensors[t].buffer for t in live)})
        b_index = {old: k for k, old in enumerate(live_buffers)}
        # Identical vectors and quantization tables are written once and referenced by every tensor that has
        # them (flatbuffers allows shared objects): the all-zero zero-point vector of a per-channel weight and
        # its bias (8 bytes per channel each), equal shapes, equal activation grids. EfficientNet-Lite's int8
        # file carried 94 KB of int64 zero points, 12 % of it.
        self._shared: dict[tuple, int] = {}
        # Large payloads first: flatbuffers writes back to front, and this keeps them 16-byte aligned.
        buffer_offsets = []
        for data in (self.buffers[i] for i in live_buffers):
            data_off = self._bytes_vector(b, data) if data else None
            tfl.BufferStart(b)
            if data_off is not None:
                tfl.BufferAddData(b, data_off)
            buffer_offsets.append(tfl.BufferEnd(b))
        edges = {*inputs, *outputs}
        tensor_offsets = [self._tensor(b, self.tensors[i], b_index[self.tensors[i].buffer],
                                       i in edges or self._named(self.tensors[i])) for i in live]
        op_offsets = [self._operator(b, op, t_index) for op in self.operators]
        code_offsets = []
        for code, version in self.opcodes:
            tfl.OperatorCodeStart(b)
            tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES))
            tfl.OperatorCodeAddBuiltinCode(b, code)
            tfl.OperatorCodeAddVersion(b, version)
            code_offsets.append(tfl.OperatorCodeEnd(b))

        tensors_vec = self._offset_vector(b, tfl.SubGraphStartTensorsVector, tensor_offsets)
        ops_vec = self._offset_vector(b, tfl.SubGraphStartOperatorsVector, op_offsets)
        in_vec = self._int_vector(b, tfl.SubGraphStartInputsVector, [t_index[i] for i in inputs])
        out_vec = self._int_vector(b, tfl.SubGraphStartOutputsVector, [t_index[o] for o in outputs])
        sg_name = b.CreateString("main")
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, tensors_vec)
        tfl.SubGraphAddInputs(b, in_vec)
        tfl.SubGraphAddOutputs(b, out_vec)
        tfl.SubGraphAddOperators(b, ops_vec)
        tfl.SubGraphAddName(b, sg_name)
        subgraph = tfl.SubGraphEnd(b)

        codes_vec = self._offset_vector(b, tfl.ModelStartOperatorCodesVector, code_offsets)
        subgraphs_vec = self._offset_vector(b, tfl.ModelStartSubgraphsVector, [subgraph])
        buffers_vec = self._offset_vector(b, tfl.ModelStartBuffersVector, buffer_offsets)
        desc = b.CreateString(self.description)
        tfl.ModelStart(b)
        tfl.ModelAddVersion(b, SCHEMA_VERSION)
        tfl.ModelAddOperatorCodes(b, codes_vec)
        tfl.ModelAddSubgraphs(b, subgraphs_vec)
        tfl.ModelAddDescription(b, desc)
        tfl.ModelAddBuffers(b, buffers_vec)
        model = tfl.ModelEnd(b)
        b.Finish(model, file_identifier=FILE_IDENTIFIER)
        return memoryview(b.Bytes)[b.Head():]

    @staticmethod
    def _bytes_vector(b, data: bytes) -> int:
        # Weights are aligned for kernels that read them in place; a small constant (a shape, an axis, a perm,
        # a slice's bounds: dozens in an unrolled decoder) only needs its elements' alignment (≤ 8 bytes).
        b.StartVector(1, len(data), _BUFFER_ALIGNMENT if len(data) >= _SMALL_BUFFER else 8)
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        return b.EndVector()

    @staticmethod
    def _offset_vector(b, start_fn, offsets) -> int:
        start_fn(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    @staticmethod
    def _int_vector(b, start_fn, values) -> int:
        start_fn(b, len(values))
        for v in reversed(list(values)):
            b.PrependInt32(int(v))
        return b.EndVector()

    def _once(self, key: tuple, build) -> int:
        """The offset of the object ``build()`` writes, written at the first request for ``key`` only."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def _named(self, t: TensorDef) -> bool:
        return self.keep_name is None or (not t.buffer and self.keep_name(t.name))

    def _tensor(self, b, t: TensorDef, buffer: int, named: bool = True) -> int:
        tfl = self._tflite
        q_off = self._once(("quant", t.quant), lambda: self._quantization(b, t.quant)) if t.quant is not None else None
        name = b.CreateString(t.name) if named and t.name else None
        sparsity = self._sparsity(b, t.sparsity) if t.sparsity is not None else None
        shape = self._once(("shape", t.shape), lambda: self._int_vector(b, tfl.TensorStartShapeVector, t.shape))
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        tfl.TensorAddType(b, int(t.dtype))
        tfl.TensorAddBuffer(b, buffer)
        if name is not None:
            tfl.TensorAddName(b, name)
        if q_off is not None:
            tfl.TensorAddQuantization(b, q_off)
        if t.variable:
            tfl.TensorAddIsVariable(b, True)
        if sparsity is not None:
            tfl.TensorAddSparsity(b, sparsity)
        return tfl.TensorEnd(b)

    # The narrowest index vector that holds a dimension's segments or indices (LiteRT reads all three).
    _INDEX_VECTORS = ((np.uint8, "Uint8Vector", 3), (np.uint16, "Uint16Vector", 2), (np.int32, "Int32Vector", 1))

    def _index_vector(self, b, values: np.ndarray) -> tuple[int, int]:
        tfl = self._tflite
        top = int(values.max()) if values.size else 0
        dtype, table, union = next(v for v in self._INDEX_VECTORS if top <= np.iinfo(v[0]).max)
        data = b.CreateNumpyVector(np.ascontiguousarray(values, np.dtype(dtype).newbyteorder("<")))
        getattr(tfl, f"{table}Start")(b)
        getattr(tfl, f"{table}AddValues")(b, data)
        return union, getattr(tfl, f"{table}End")(b)

    def _sparsity(self, b, sp: SparseDims) -> int:
        tfl = self._tflite
        dim_offsets = []
        for d in sp.dims:
            if isinstance(d, tuple):
                (seg_type, seg), (idx_type, idx) = self._index_vector(b, d[0]), self._index_vector(b, d[1])
            tfl.DimensionMetadataStart(b)
            if isinstance(d, tuple):
                tfl.DimensionMetadataAddFormat(b, 1)  # SPARSE_CSR
                tfl.DimensionMetadataAddArraySegmentsType(b, seg_type)
                tfl.DimensionMetadataAddArraySegments(b, seg)
                tfl.DimensionMetadataAddArrayIndicesType(b, idx_type)
                tfl.DimensionMetadataAddArrayIndices(b, idx)
            else:
                tfl.DimensionMetadataAddFormat(b, 0)  # DENSE
                tfl.DimensionMetadataAddDenseSize(b, int(d))
            dim_offsets.append(tfl.DimensionMetadataEnd(b))
        order = self._int_vector(b, tfl.SparsityParametersStartTraversalOrderVector, range(len(sp.dims)))
        dims = self._offset_vector(b, tfl.SparsityParametersStartDimMetadataVector, dim_offsets)
        tfl.SparsityParametersStart(b)
        tfl.SparsityParametersAddTraversalOrder(b, order)
        tfl.SparsityParametersAddDimMetadata(b, dims)
        return tfl.SparsityParametersEnd(b)

    def _quantization(self, b, q: QuantParams) -> int:
        tfl = self._tflite
        scale = self._once(("scale", q.scale), lambda: b.CreateNumpyVector(np.asarray(q.scale, np.float32)))
        zp = self._once(("zero_point", q.zero_point), lambda: b.CreateNumpyVector(np.asarray(q.zero_point, np.int64)))
        tfl.QuantizationParametersStart(b)
        tfl.QuantizationParametersAddScale(b, scale)
        tfl.QuantizationParametersAddZeroPoint(b, zp)
        tfl.QuantizationParametersAddQuantizedDimension(b, q.axis)
        return tfl.QuantizationParametersEnd(b)

    def _operator(self, b, op: OperatorDef, t_index: dict[int, int]) -> int:
        tfl = self._tflite
        opt_type, opt_off = 0, None
        if op.options is not None:
            opt_type = getattr(tfl.BuiltinOptions, op.options.name)
            key = ("options", _options_key(op.options))
            opt_off = self._once(key, lambda: self._options(b, op.options))
        ins = self._int_vector(b, tfl.OperatorStartInputsVector, [t_index[i] for i in op.inputs])
        outs = self._int_vector(b, tfl.OperatorStartOutputsVector, [t_index[o] for o in op.outputs])
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, op.opcode_index)
        tfl.OperatorAddInputs(b, ins)
        tfl.OperatorAddOutputs(b, outs)
        if opt_off is not None:
            tfl.OperatorAddBuiltinOptionsType(b, opt_type)
            tfl.OperatorAddBuiltinOptions(b, opt_off)
        return tfl.OperatorEnd(b)

    def _options(self, b, options: Options) -> int:
        tfl = self._tflite
        vectors = {}
        for key, value in options.fields.items():
            if isinstance(value, list | tuple):
                start = getattr(tfl, f"{options.name}Start{key}Vector")
                vectors[key] = self._int_vector(b, start, value)
        getattr(tfl, f"{options.name}Start")(b)
        for key, value in options.fields.items():
            add = getattr(tfl, f"{options.name}Add{key}")
            add(b, vectors[key] if key in vectors else value)
        return getattr(tfl, f"{options.name}End")(b)
