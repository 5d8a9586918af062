"""A deliberately broken exporter for the verification tests: one node written with a wrong weight scale."""

from __future__ import annotations

import contextlib

from torch import fx

from compress import ops
from compress.ops.spec import Emitter


@contextlib.contextmanager
def wrong_weight_scale(monkeypatch, fmt: str, module, attr: str, node_name: str, factor: float = 1.5):
    """Make ``fmt``'s quantized-linear emitter write node ``node_name`` with its weight scale × ``factor``
    (``module.attr`` is the weight-code helper that emitter calls); every other node is written as usual."""
    spec = ops.get("linear")
    key = (fmt, fmt == "onnx")  # ONNX registers the quant-layer form apart; TFLite one form for both
    real_emit, real_codes = spec.emitters[key].fn, getattr(module, attr)

    def corrupt(*args, **kwargs):
        out = real_codes(*args, **kwargs)
        return (out[0], out[1] * factor, *out[2:])

    def emit(*args):
        node = next(a for a in args if isinstance(a, fx.Node))
        if node.name != node_name:
            return real_emit(*args)
        setattr(module, attr, corrupt)
        try:
            return real_emit(*args)
        finally:
            setattr(module, attr, real_codes)

    monkeypatch.setitem(spec.emitters, key, Emitter(emit, spec.emitters[key].quantized))
    yield
