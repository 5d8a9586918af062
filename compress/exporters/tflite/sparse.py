"""Pruned weights stored compactly in a TFLite file: a sparse constant (``SparsityParameters``) read by DENSIFY.

An unstructured-pruned weight is mostly zeros, and a dense buffer stores every one of them. TFLite can store a
constant in CSR form instead: the leading dimensions DENSE, the last one SPARSE_CSR (``segments`` has one entry
per row of the leading dimensions, plus one; ``indices`` the column of each stored element), the buffer only the
nonzero values. A DENSIFY operator expands it into the dense tensor its consumer reads; LiteRT runs it once, at
the first invoke (the input is constant), and XNNPACK densifies a float weight at delegation time, so the
convolution still runs dense, in the same partition, at the same speed — what sparsity buys here is bytes.

A weight is stored sparse only where that is smaller, counted in bytes: values + segments + indices (each index
vector in the narrowest of uint8 / uint16 / int32 that holds it) + the tables this costs (``OVERHEAD_BYTES``)
below the dense payload. At 80 % zeros an fp32 3×3 convolution's weight shrinks to ~0.3× (4-byte values, 1-byte
indices), an int8 one to ~0.45× (the indices cost as much as the values).

Example:
    >>> import numpy as np
    >>> w = np.array([[0, 2, 0, 0], [0, 0, 0, 0], [5, 0, 0, 7]], np.float32)
    >>> enc = encode_csr(w)
    >>> enc.values.tolist(), enc.segments.tolist(), enc.indices.tolist()
    ([2.0, 5.0, 7.0], [0, 1, 1, 3], [1, 0, 3])
    >>> enc.nbytes  # 3 values × 4 + 4 segments × 1 + 3 indices × 1
    19
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from compress.exporters.tflite.schema import ModelWriter, Options, SparseDims, TensorType, numpy_dtype

#: Weight inputs (operator → input position) that may be read through DENSIFY. LiteRT's builtin kernels read
#: the filter at every invoke, and XNNPACK's delegate treats a DENSIFY of a constant as a static weight.
SPARSE_WEIGHT_INPUTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}

#: The dtypes stored sparse. int8 is not: XNNPACK delegates DENSIFY of float weights only, so an int8 weight
#: read through DENSIFY runs on LiteRT's builtin kernels (measured: ai-edge-litert 2.3; see README, Prune).
SPARSE_DTYPES = frozenset({TensorType.FLOAT32})

#: Bytes a sparse weight costs beyond its values, segments and indices: the DENSIFY operator, the dense tensor
#: it writes, the SparsityParameters / DimensionMetadata tables and vector headers: 239-256 bytes measured on
#: exported files, plus 16 of alignment (tests/exporters/test_tflite_sparse.py checks the saving against it).
OVERHEAD_BYTES = 272


def _index_bytes(top: int) -> int:
    """Bytes per element of the narrowest index vector that holds values up to ``top`` (as the writer picks)."""
    return 1 if top <= 0xFF else 2 if top <= 0xFFFF else 4


@dataclass(frozen=True)
class CsrEncoding:
    """A tensor in CSR form over its last dimension (the leading ones flattened into rows)."""

    shape: tuple[int, ...]
    values: np.ndarray  # the nonzero elements, row-major
    segments: np.ndarray  # rows + 1 offsets into values
    indices: np.ndarray  # the last-dimension position of each value

    @property
    def nbytes(self) -> int:
        """Payload bytes: values, segments and indices at the widths the writer stores them in."""
        return (self.values.nbytes + self.segments.size * _index_bytes(int(self.segments[-1]))
                + self.indices.size * _index_bytes(self.shape[-1] - 1))

    @property
    def sparsity(self) -> SparseDims:
        return SparseDims((*self.shape[:-1], (self.segments, self.indices)))


def encode_csr(array: np.ndarray) -> CsrEncoding:
    """``array`` (rank ≥ 1) with its leading dimensions dense and the last one CSR; zeros are not stored."""
    array = np.asarray(array)
    rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
    nz = rows != 0
    segments = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
    return CsrEncoding(tuple(array.shape), rows[nz], segments, np.nonzero(nz)[1].astype(np.int64))


@dataclass(frozen=True)
class SparseWeight:
    """One weight the writer stored sparse: its tensor name and the payload bytes dense and sparse."""

    name: str
    shape: tuple[int, ...]
    dense_bytes: int
    sparse_bytes: int
    nonzero: int


def sparsify_weights(writer: ModelWriter, dtypes=SPARSE_DTYPES) -> list[SparseWeight]:
    """Rewrite ``writer``'s weights that are smaller in CSR form as sparse constants read through DENSIFY.

    Call after the graph is written and before :meth:`ModelWriter.serialize`. Each weight input of
    :data:`SPARSE_WEIGHT_INPUTS` holding a constant of ``dtypes`` whose CSR payload plus :data:`OVERHEAD_BYTES` is
    below its dense bytes is replaced (once per constant, however many operators read it) by a DENSIFY output;
    densify is exact, so the file computes the same bits. Returns what was rewritten.
    """
    dense_of: dict[int, int] = {}  # constant tensor → the DENSIFY output standing for it
    done: list[SparseWeight] = []
    slots = [(op, SPARSE_WEIGHT_INPUTS.get(writer.op_name(op.opcode_index))) for op in writer.operators]
    slots = [(op, s) for op, s in slots if s is not None and s < len(op.inputs) and op.inputs[s] >= 0]
    # A constant some other input also reads (a bias slot, an ADD) would then be stored twice: it stays dense.
    weight_reads = {(id(op), s) for op, s in slots}
    other = {t for op in writer.operators for i, t in enumerate(op.inputs) if (id(op), i) not in weight_reads}
    read = {t for op in writer.operators for t in op.inputs if t >= 0}
    users = Counter(writer.tensors[t].buffer for t in read)  # a buffer another tensor (a reshaped view) reads too
    for op, slot in slots:
        t_idx = op.inputs[slot]
        if t_idx not in dense_of:
            t = writer.tensors[t_idx]
            if not t.buffer or t.sparsity is not None or t.dtype not in dtypes or t_idx in other \
                    or users[t.buffer] > 1:
                continue
            data = np.frombuffer(writer.buffers[t.buffer], numpy_dtype(t.dtype)).reshape(t.shape)
            enc = encode_csr(data)
            if enc.nbytes + OVERHEAD_BYTES >= len(writer.buffers[t.buffer]):
                continue
            sparse = writer.add_sparse_constant(f"{t.name}_sparse", t.shape, t.dtype, enc.values, enc.sparsity, t.quant)
            dense = writer.add_tensor(f"{t.name}_dense", t.shape, t.dtype, quant=t.quant)
            writer.prepend_operator("DENSIFY", [sparse], [dense], Options("DensifyOptions"))
            dense_of[t_idx] = dense
            done.append(SparseWeight(t.name, t.shape, data.nbytes, enc.nbytes, int(enc.values.size)))
        op.inputs = (*op.inputs[:slot], dense_of[t_idx], *op.inputs[slot + 1:])
    return done
