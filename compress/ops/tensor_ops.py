"""Declarations: elementwise arithmetic, shapes and indexing, reductions, comparisons, constants.

These are the torch functions and tensor methods the captured graph calls between layers (``compress.capture``
raises every aten op it knows to one of them); ``aten`` is the generic entry for the aten ops it keeps as
they are, which only ONNX can carry (in float, through torch.onnx).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.layers.elementwise import (
    FloatAdd,
    FloatCat,
    FloatMatmul,
    FloatMul,
    QuantAdd,
    QuantCat,
    QuantMatmul,
    QuantMul,
)
from compress.ops.nn_ops import C, P, S
from compress.ops.spec import Coupling, OpSpec, Policy, declare
from compress.quant.fake import Quantizer

E = Coupling.ELEMENTWISE

declare(OpSpec("quantize", Policy.QUANTIZER, modules=(Quantizer,), coupling=Coupling.PASSTHROUGH))

# -- elementwise arithmetic ---------------------------------------------------------------------------------
declare(OpSpec("add", C, modules=(FloatAdd, QuantAdd), functions=(operator.add, torch.add, operator.iadd),
               methods=("add",), aten=("add",), coupling=E, reference=np.add, int8_constants=True))
declare(OpSpec("sub", C, functions=(operator.sub, torch.sub), methods=("sub",), aten=("sub", "rsub"), coupling=E, reference=np.subtract))
declare(OpSpec("mul", C, modules=(FloatMul, QuantMul), functions=(operator.mul, torch.mul), methods=("mul",),
               aten=("mul",), coupling=E, reference=np.multiply, int8_constants=True))
declare(OpSpec("div", C, functions=(operator.truediv, torch.div), methods=("div",), aten=("div",), coupling=E, reference=np.divide))
declare(OpSpec("matmul", C, modules=(FloatMatmul, QuantMatmul),
               functions=(operator.matmul, torch.matmul, torch.bmm), methods=("matmul", "bmm"),
               aten=("matmul", "bmm", "mm"), coupling=Coupling.MATMUL,
               reason="", reference=np.matmul))
declare(OpSpec("cat", C, modules=(FloatCat, QuantCat), functions=(torch.cat, torch.concat), aten=("cat",),
               coupling=Coupling.CONCAT, int8_constants=True))
declare(OpSpec("where", C, functions=(torch.where,), aten=("where",), coupling=E,
               reference=np.where))
declare(OpSpec("masked_fill", C, functions=(torch.masked_fill,), methods=("masked_fill",), aten=("masked_fill",), coupling=E))
for _name, _fn, _ref in (("exp", torch.exp, np.exp), ("log", torch.log, np.log), ("sqrt", torch.sqrt, np.sqrt),
                         ("rsqrt", torch.rsqrt, lambda x: 1 / np.sqrt(x)), ("abs", torch.abs, np.abs),
                         ("reciprocal", torch.reciprocal, np.reciprocal), ("erf", torch.erf, None)):
    declare(OpSpec(_name, C, functions=(_fn,), methods=(_name,), aten=(_name,),
                   coupling=Coupling.PASSTHROUGH, reference=_ref))
declare(OpSpec("pow", C, functions=(torch.pow, operator.pow), methods=("pow",), aten=("pow",), coupling=Coupling.PASSTHROUGH, reference=np.power))
declare(OpSpec("cumsum", C, functions=(torch.cumsum,), methods=("cumsum",), aten=("cumsum",), coupling=Coupling.BLOCKING, reference=np.cumsum))

# -- reductions ---------------------------------------------------------------------------------------------
declare(OpSpec("mean", C, functions=(torch.mean,), methods=("mean",), aten=("mean",), coupling=Coupling.BLOCKING,
               reference=np.mean))
declare(OpSpec("sum", C, functions=(torch.sum,), methods=("sum",), aten=("sum",),
               coupling=Coupling.BLOCKING, reference=np.sum))
declare(OpSpec("amax", P, functions=(torch.amax, torch.amin), methods=("amax", "amin"), aten=("amax", "amin"), coupling=Coupling.BLOCKING))
declare(OpSpec("max_min", P, functions=(torch.max, torch.min), aten=("max", "min"),
               coupling=Coupling.BLOCKING))
declare(OpSpec("argmax", S, functions=(torch.argmax, torch.argmin), methods=("argmax", "argmin"),
               aten=("argmax", "argmin")))

# -- shapes, layout and indexing (values move, none is computed) --------------------------------------------
declare(OpSpec("reshape", P, modules=(nn.Flatten, nn.Unflatten),
               functions=(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten),
               methods=("view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
                        "unflatten"),
               aten=("view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten"), coupling=Coupling.BLOCKING))
declare(OpSpec("transpose", P, functions=(torch.permute, torch.transpose), methods=("permute", "transpose"),
               aten=("permute", "transpose", "t"), coupling=Coupling.PERMUTE))
declare(OpSpec("getitem", P, functions=(operator.getitem,), methods=("__getitem__",), aten=("select", "slice"),
               coupling=Coupling.INDEX))
declare(OpSpec("split", P, functions=(torch.split, torch.chunk, torch.unbind), methods=("split", "chunk", "unbind"),
               aten=("split", "split_with_sizes", "chunk", "unbind"), coupling=Coupling.BLOCKING))
declare(OpSpec("expand", P, methods=("expand", "expand_as", "repeat"), aten=("expand", "repeat"), coupling=Coupling.BROADCAST))
declare(OpSpec("pad", P, functions=(F.pad,), modules=(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
                                                      nn.ReflectionPad1d, nn.ReflectionPad2d,
                                                      nn.ReplicationPad1d, nn.ReplicationPad2d),
               aten=("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
                     "replication_pad2d"), coupling=Coupling.PASSTHROUGH))
declare(OpSpec("interpolate", C, functions=(F.interpolate,), modules=(nn.Upsample,),
               aten=("upsample_nearest2d", "upsample_bilinear2d"),
               coupling=Coupling.PASSTHROUGH))
declare(OpSpec("gather", P, functions=(torch.gather, torch.index_select), methods=("gather", "index_select"),
               aten=("gather", "index_select", "index"), coupling=Coupling.BLOCKING))

# -- booleans, indices, sizes and constants: no real-valued activation --------------------------------------
declare(OpSpec("compare", S, functions=(torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, operator.eq,
                                        operator.ne, operator.lt, operator.le, operator.gt, operator.ge),
               methods=("eq", "ne", "lt", "le", "gt", "ge"), aten=("eq", "ne", "lt", "le", "gt", "ge")))
declare(OpSpec("logical", S, functions=(torch.logical_and, torch.logical_or, torch.logical_not),
               methods=("logical_and", "logical_or", "logical_not"),
               aten=("logical_and", "logical_or", "logical_not", "bitwise_not")))
declare(OpSpec("shape", S, methods=("size", "dim", "numel"), aten=("sym_size",)))
declare(OpSpec("cast", S, methods=("to", "type", "type_as", "float", "long", "int", "bool"),
               aten=("_to_copy", "to")))
declare(OpSpec("constant", S, functions=(torch.arange, torch.zeros, torch.ones, torch.full, torch.zeros_like,
                                         torch.ones_like, torch.full_like),
               aten=("arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like")))
declare(OpSpec("aten", C, coupling=Coupling.BLOCKING,
               reason="no torch-level form in compress; exported alone by torch.onnx and run in float"))
