"""The TFLite exporter's state while it walks an fx graph: values, constants, layout and domain conversions.

Value model — every fx node maps to one of

* :class:`TValue`: a TFLite tensor standing for a torch tensor, with its layout (``perm``, ``col_perm``, see
  :mod:`compress.exporters.tflite.layout`) and its domain: float32, or int8 with per-tensor
  :class:`~compress.exporters.tflite.schema.QuantParams`;
* :class:`Const`: a numpy constant (a ``get_attr`` buffer), written when an op consumes it;
* a plain Python value (``x.size(0)``, a shape tuple), computed while walking.

Conversions (layout transposes, DEQUANTIZE of an int8 value) are cached per value, so a tensor consumed by
several ops is converted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import fx, nn

from compress import ops
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.schema import ModelWriter, Options, QuantParams, TensorType
from compress.layers.base import FusedActivation
from compress.passes import graph as g
from compress.quant.fake import Quantizer

# TFLite ActivationFunctionType values.
ACT_CODE = {FusedActivation.NONE: 0, FusedActivation.RELU: 1, FusedActivation.RELU6: 3}


@dataclass
class TValue:
    """A TFLite tensor standing for a torch tensor of ``shape``."""

    tensor: int
    shape: tuple[int, ...]
    dtype: TensorType
    perm: tuple[int, ...]
    quant: QuantParams | None = None
    col_perm: np.ndarray | None = None
    nonnegative: bool = False  # known ≥ 0 (after a ReLU): max-pool padding may then use zeros
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def is_int8(self) -> bool:
        return self.dtype == TensorType.INT8

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Const:
    """A constant tensor of the model (``get_attr``, folded constants), in torch layout; ``quant``: the int8 grid
    its values already lie on (a folded constant that went through a quantizer)."""

    array: np.ndarray
    quant: QuantParams | None = None


def qparams_of(q: Quantizer) -> QuantParams:
    return QuantParams.per_tensor(float(q.scale.reshape(())), int(q.zero_point.reshape(())))


def grid_codes(values, q: QuantParams) -> np.ndarray:
    """Real values as int8 codes on the per-tensor activation grid ``q`` (clamped to [-128, 127])."""
    values = np.asarray(values, np.float64)
    return np.clip(np.round(values / q.scale[0]) + q.zero_point[0], -128, 127).astype(np.int8)


def same_grid(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return False
    return a.zero_point == b.zero_point and np.allclose(a.scale, b.scale, rtol=1e-6, atol=0)


def combine_act(a: FusedActivation, b: FusedActivation) -> FusedActivation:
    if FusedActivation.RELU6 in (a, b):
        return FusedActivation.RELU6
    if FusedActivation.RELU in (a, b):
        return FusedActivation.RELU
    return FusedActivation.NONE


@dataclass
class OutputPlan:
    """What follows an op in the graph and folds into it: a clamp (fused activation) and an output quantizer."""

    act: FusedActivation = FusedActivation.NONE
    quant: QuantParams | None = None
    absorbed: list[fx.Node] = field(default_factory=list)


class Emitter:
    """Writes TFLite tensors and operators for the nodes of one fx graph."""

    def __init__(self, gm: fx.GraphModule, writer: ModelWriter, quantized: bool,
                 float_ops: frozenset[str] = frozenset(), xnnpack: bool = False):
        self.gm = gm
        self.w = writer
        self.quantized = quantized
        # TFLite ops written in float between DEQUANTIZE / QUANTIZE even when their inputs are int8.
        self.float_ops = float_ops
        # Written for XNNPACK (Int8Kernels.XNNPACK): int8 ops take the forms its int8 kernels accept.
        self.xnnpack = xnnpack
        self.modules = dict(gm.named_modules())
        self.values: dict[fx.Node, Any] = {}
        self.op_counts: dict[str, int] = {}
        self.output_scales: list[float | None] = []

    # -- tensors -----------------------------------------------------------------------------------------
    def tensor(self, name: str, torch_shape, perm, dtype: TensorType, quant: QuantParams | None = None,
               col_perm=None, nonnegative: bool = False) -> TValue:
        shape = L.permute_shape(torch_shape, perm)
        if col_perm is not None:
            shape = tuple(torch_shape)
        idx = self.w.add_tensor(name, shape, dtype, quant=quant)
        return TValue(idx, tuple(int(d) for d in torch_shape), dtype, tuple(perm), quant, col_perm, nonnegative)

    def like(self, v: TValue, name: str, shape=None, quant: QuantParams | None | str = "same",
             dtype: TensorType | None = None) -> TValue:
        """A new tensor in ``v``'s layout (and grid, unless ``quant`` is given)."""
        q = v.quant if quant == "same" else quant
        dt = dtype if dtype is not None else (TensorType.INT8 if q is not None else TensorType.FLOAT32)
        return self.tensor(name, v.shape if shape is None else shape, v.perm, dt, q, v.col_perm)

    def const(self, name: str, array: np.ndarray, dtype: TensorType, quant: QuantParams | None = None) -> int:
        array = np.asarray(array)
        return self.w.add_tensor(name, array.shape, dtype, data=array, quant=quant)

    def int32_const(self, name: str, values) -> int:
        return self.const(name, np.asarray(values, np.int32), TensorType.INT32)

    def op(self, op_name: str, inputs, outputs, options: Options | None = None, version: int = 1) -> None:
        if self.w.add_operator(op_name, inputs, outputs, options, version):  # False: a repeat, not written
            self.op_counts[op_name] = self.op_counts.get(op_name, 0) + 1

    # -- values of fx arguments -----------------------------------------------------------------------
    def value(self, arg):
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, list | tuple):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def module(self, node: fx.Node) -> nn.Module | None:
        return g.target_module(node, self.modules)

    def const_value(self, c, like: TValue, name: str) -> TValue:
        """A constant operand (``Const`` or Python number) broadcast against ``like``, in ``like``'s layout
        and domain (int8 constants get their own symmetric grid)."""
        arr = np.asarray(c.array if isinstance(c, Const) else c, np.float32)
        if arr.ndim == like.rank and arr.ndim > 0:
            arr = arr.transpose(like.perm)
        elif arr.ndim > 0 and not L.is_identity(like.perm) and arr.size > 1:
            arr = np.broadcast_to(arr, like.shape).transpose(like.perm)
        arr = np.ascontiguousarray(arr)
        if like.is_int8 and isinstance(c, Const) and c.quant is not None:  # already on a grid: keep it exact
            q = c.quant
            data = grid_codes(arr, q)
            idx = self.const(name, data, TensorType.INT8, q)
            return TValue(idx, arr.shape, TensorType.INT8, L.identity(arr.ndim), q)
        if like.is_int8:
            peak = float(np.abs(arr).max()) if arr.size else 0.0
            scale = peak / 127.0 if peak > 0 else 1.0
            q = QuantParams.per_tensor(scale, 0)
            data = np.clip(np.round(arr / scale), -127, 127).astype(np.int8)
            idx = self.const(name, data, TensorType.INT8, q)
            return TValue(idx, arr.shape, TensorType.INT8, L.identity(arr.ndim), q)
        idx = self.const(name, arr, TensorType.FLOAT32)
        return TValue(idx, arr.shape, TensorType.FLOAT32, L.identity(arr.ndim))

    def materialize(self, c: Const, name: str) -> TValue:
        """A folded constant as a constant tensor in torch layout: int8 on its grid in an int8 graph (a constant
        that went through a quantizer), else in its own dtype."""
        arr = np.ascontiguousarray(np.asarray(c.array))
        if self.quantized and c.quant is not None:
            q = c.quant
            codes = grid_codes(arr, q)
            return TValue(self.const(name, codes, TensorType.INT8, q), codes.shape, TensorType.INT8,
                          L.identity(codes.ndim), q)
        dtype = {np.dtype(np.int64): TensorType.INT64, np.dtype(np.int32): TensorType.INT32,
                 np.dtype(np.bool_): TensorType.BOOL}.get(arr.dtype, TensorType.FLOAT32)
        return TValue(self.const(name, arr, dtype), arr.shape, dtype, L.identity(arr.ndim))

    # -- domain conversions ---------------------------------------------------------------------------
    def to_float(self, v: TValue) -> TValue:
        if not v.is_int8:
            return v
        key = ("float",)
        if key not in v._cache:
            out = self.tensor(f"t{v.tensor}_dequant", v.shape, v.perm, TensorType.FLOAT32, None, v.col_perm,
                              v.nonnegative)
            self.op("DEQUANTIZE", [v.tensor], [out.tensor], version=2)
            if "chw" in v._cache:  # a flattened NHWC value: the float copy is flattened the same way
                out._cache["chw"] = v._cache["chw"]
            v._cache[key] = out
        return v._cache[key]

    def quantize(self, v: TValue, q: QuantParams, name: str) -> TValue:
        """``v`` on the int8 grid ``q``: QUANTIZE from float; an int8 value is requantized through float.

        Why not one int8 → int8 QUANTIZE: XNNPACK runs it as a ``qs8`` convert whose scale ratio is a
        fixed-point multiplier with 8 fractional bits (ratio 0.6037 runs as 155/256 = 0.6055), so codes
        above ~60 land one LSB off the torch simulation, and later layers amplify it (the property test saw
        2 LSB at the output). DEQUANTIZE → QUANTIZE keeps the float scales and rounds once, as torch does.
        """
        if v.is_int8 and same_grid(v.quant, q):
            return v
        key = ("quant", q)
        if key not in v._cache:
            src = self.to_float(v)
            out = self.tensor(name, v.shape, v.perm, TensorType.INT8, q, v.col_perm, v.nonnegative)
            self.op("QUANTIZE", [src.tensor], [out.tensor], version=1)
            v._cache[key] = out
        return v._cache[key]

    # -- layout conversions ---------------------------------------------------------------------------
    def to_perm(self, v: TValue, perm) -> TValue:
        """``v`` with TFLite axes in ``perm`` order (a cached TRANSPOSE when it differs)."""
        v = self.uncollapse(v)
        perm = tuple(perm)
        if v.perm == perm:
            return v
        key = ("perm", perm)
        if key not in v._cache:
            out = self.tensor(f"t{v.tensor}_transposed", v.shape, perm, v.dtype, v.quant, None, v.nonnegative)
            attr = self.int32_const(f"t{v.tensor}_perm", L.transpose_between(v.perm, perm))
            self.op("TRANSPOSE", [v.tensor, attr], [out.tensor], version=2 if v.is_int8 else 1)
            v._cache[key] = out
        return v._cache[key]

    def torch_order(self, v: TValue) -> TValue:
        return self.to_perm(v, L.identity(v.rank))

    def uncollapse(self, v: TValue) -> TValue:
        """A flattened NHWC value (``col_perm``) back in torch feature order."""
        if v.col_perm is None:
            return v
        key = ("uncollapse",)
        if key not in v._cache:
            n, feats = v.shape
            c, h, w = v._cache["chw"]
            nhwc = self.tensor(f"t{v.tensor}_nhwc", (n, c, h, w), L.NCHW_TO_NHWC, v.dtype, v.quant)
            self.reshape(v.tensor, nhwc, (n, h, w, c), v.is_int8)
            nchw = self.to_perm(nhwc, L.identity(4))
            flat = self.tensor(f"t{v.tensor}_flat", (n, feats), (0, 1), v.dtype, v.quant)
            self.reshape(nchw.tensor, flat, (n, feats), v.is_int8)
            v._cache[key] = flat
        return v._cache[key]

    def reshape(self, src: int, out: TValue, tfl_shape, int8: bool) -> None:
        shape = self.int32_const(f"t{out.tensor}_shape", list(tfl_shape))
        self.op("RESHAPE", [src, shape], [out.tensor], Options("ReshapeOptions", {"NewShape": list(tfl_shape)}))

    # -- output fusion -------------------------------------------------------------------------------------
    def clamp_kind(self, node: fx.Node) -> FusedActivation | None:
        """RELU / RELU6 when ``node`` is a ReLU-like op an int8 kernel can fuse (the registry's ``relu`` /
        ``relu6``, or a hardtanh over [0, 6]), else None."""
        spec = ops.lookup(node, self.modules)
        if spec is None:
            return None
        if spec.name == "relu":
            return FusedActivation.RELU
        if spec.name == "relu6" or spec.name == "hardtanh" and hardtanh_bounds(self, node) == (0.0, 6.0):
            return FusedActivation.RELU6
        return None

    def is_quantizer(self, node: fx.Node) -> bool:
        return isinstance(self.module(node), Quantizer)

    def plan_output(self, node: fx.Node, act: FusedActivation = FusedActivation.NONE,
                    fuse_act: bool = True) -> OutputPlan:
        """Fold a following ReLU/ReLU6 (sole user) and output quantizer (sole user) into ``node``'s op."""
        plan = OutputPlan(act)
        cur = node
        users = list(cur.users)
        if fuse_act and len(users) == 1 and self.clamp_kind(users[0]) is not None:
            plan.act = combine_act(plan.act, self.clamp_kind(users[0]))
            cur = users[0]
            plan.absorbed.append(cur)
            users = list(cur.users)
        if self.quantized and len(users) == 1 and self.is_quantizer(users[0]):
            plan.quant = qparams_of(self.module(users[0]))
            plan.absorbed.append(users[0])
        return plan

    def bind(self, node: fx.Node, value, plan: OutputPlan | None = None) -> None:
        self.values[node] = value
        if plan is not None:
            for n in plan.absorbed:
                self.values[n] = value


def hardtanh_bounds(em: Emitter, node: fx.Node) -> tuple[float, float]:
    """(min, max) of a hardtanh node: ``nn.Hardtanh`` module or ``F.hardtanh(x, min_val, max_val)``."""
    mod = em.module(node)
    if isinstance(mod, nn.Hardtanh):
        return float(mod.min_val), float(mod.max_val)
    args = list(node.args[1:3])
    low = args[0] if args else node.kwargs.get("min_val", -1.0)
    high = args[1] if len(args) > 1 else node.kwargs.get("max_val", 1.0)
    return float(low), float(high)
