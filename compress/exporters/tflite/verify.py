"""Prove an exported ``.tflite`` file computes what the torch simulation computes, in the real runtime.

:func:`verify_tflite` loads the file in LiteRT (``ai_edge_litert``; the default op resolver, so XNNPACK runs
what it supports, as on a device), feeds the same inputs to it and to the torch reference, and compares under
the numerics contract (DESIGN.md): outputs computed in int8 within 1 LSB of their grid on ≥ 99% of elements;
float outputs within a relative error (max |diff| / max |reference|) of 1e-4. The report is the same
:class:`~compress.exporters.verify.ParityReport` the ONNX verification returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
from torch import nn

from compress.errors import DataError, VerificationError, require
from compress.exporters.tflite.export import TFLiteExportInfo
from compress.exporters.verify import (
    ParityReport,
    VerifyConfig,
    collect_diffs,
    output_parity,
    parity_report,
)


def load_interpreter(path, num_threads: int = 1):
    """A LiteRT ``Interpreter`` for ``path`` with tensors allocated.

    Raises:
        VerificationError: LiteRT rejects the file (the message carries LiteRT's reason).
    """
    litert = require("ai_edge_litert.interpreter", "tflite")
    with _native_stderr_captured() as captured:
        try:
            it = litert.Interpreter(model_path=str(path), num_threads=num_threads)
            it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            native = " ".join(line for line in captured().splitlines() if "ERROR" in line)[:300]
            reason = str(exc).splitlines()[0] + (f": {native}" if native else "")
            raise VerificationError(f"LiteRT cannot load {path} ({reason}); re-export it, or report the op named in "
                                    "the message") from exc
    return it


@contextlib.contextmanager
def _native_stderr_captured():
    """Route the C++ runtime's stderr (file descriptor 2) to a temp file while LiteRT loads a model.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on every load, which would interleave with
    our progress bars and tables; its load errors are written there too, so the caller gets the text back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def xnnpack_delegation(path, num_threads: int = 1) -> dict:
    """Which operators of ``path`` LiteRT hands to XNNPACK, and which fall back to its builtin kernels.

    LiteRT replaces each delegated run of operators by one ``DELEGATE`` node; an operator is delegated when
    it lies between a delegate node's inputs and outputs. Every fallback splits the graph (one more
    partition) and runs a builtin kernel, on its own thread pool.

    Returns:
        ``{"partitions": number of XNNPACK partitions, "operators": count, "fallback": [op names]}``.

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.tflite.export import export_tflite
        >>> p = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> _ = export_tflite(nn.Linear(4, 2).eval(), torch.randn(1, 4), p)
        >>> xnnpack_delegation(p)["fallback"]
        []
    """
    it = load_interpreter(path, num_threads)
    ops = it._get_ops_details()  # the model's operators, then the delegate nodes LiteRT added
    model_ops = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, o in enumerate(model_ops) for t in o["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            i = producer.get(t)
            if t in boundary or i is None or i in delegated:
                continue
            delegated.add(i)
            stack.extend(int(x) for x in model_ops[i]["inputs"] if x >= 0)
    fallback = [o["op_name"] for i, o in enumerate(model_ops) if i not in delegated]
    return {"partitions": len(delegates), "operators": len(model_ops), "fallback": fallback}


def run_tflite(it, batch: tuple[np.ndarray, ...], nhwc_input: bool = False) -> list[np.ndarray]:
    """Run one batch through a loaded interpreter; int8 inputs/outputs are (de)quantized with the file's qparams.

    Batches larger than the file's static batch run as consecutive slices.
    """
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(batch) != len(ins):
        raise DataError(f"a batch has {len(batch)} arrays but the TFLite model takes {len(ins)} inputs")
    n_file = int(ins[0]["shape"][0]) if len(ins[0]["shape"]) else 1
    n = batch[0].shape[0] if batch[0].ndim else 1
    if n % n_file:
        raise DataError(f"batch size {n} is not a multiple of the exported batch size {n_file}; export with an "
                        "example batch of the size you verify with, or use batch size 1")
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for start in range(0, n, n_file):
        for detail, x in zip(ins, batch, strict=True):
            x = x[start:start + n_file]
            if nhwc_input and x.ndim == 4:
                x = x.transpose(0, 2, 3, 1)
            if detail["dtype"] == np.int8:
                scale, zp = detail["quantization"]
                x = np.clip(np.round(x / scale) + zp, -128, 127)
            it.set_tensor(detail["index"], np.ascontiguousarray(x.astype(detail["dtype"])))
        it.invoke()
        for i, detail in enumerate(outs):
            y = it.get_tensor(detail["index"])
            if detail["dtype"] == np.int8:
                scale, zp = detail["quantization"]
                y = (y.astype(np.float32) - zp) * np.float32(scale)
            results[i].append(np.asarray(y))
    return [np.concatenate(r) if len(r) > 1 else r[0] for r in results]


def verify_tflite(path, reference: Callable | nn.Module, inputs: Iterable, *, info: TFLiteExportInfo | None = None,
                  config: VerifyConfig | None = None, strict: bool = False) -> ParityReport:
    """Run ``path`` in LiteRT and ``reference`` in torch on the same inputs; compare the outputs.

    Args:
        path: the ``.tflite`` file (from :func:`~compress.exporters.tflite.export_tflite`).
        reference: the torch simulation (the converted model) or any callable taking the input tensors.
        inputs: batches; each an array/tensor (NCHW as the torch model takes it), or a tuple of them.
        info: the export's :class:`TFLiteExportInfo` (which outputs were computed in int8, and on which grid;
            the input layout). Without it, int8 output tensors are detected from the file.
        config: thresholds; ``intra_op_threads`` is LiteRT's thread count.
        strict: raise :class:`VerificationError` (with the figures) when the contract is not met.

    Returns:
        A :class:`~compress.exporters.verify.ParityReport`.

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.tflite.export import export_tflite
        >>> m = nn.Linear(4, 2).eval(); p = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> info = export_tflite(m, torch.randn(1, 4), p)
        >>> verify_tflite(p, m, [np.ones((3, 4), np.float32)], info=info).passed
        True
    """
    config = config or VerifyConfig()
    it = load_interpreter(path, config.intra_op_threads)
    outs = it.get_output_details()
    names = [d["name"] for d in outs]
    if info is not None:
        scales = list(info.output_scales)
        if len(scales) != len(outs):
            raise VerificationError(f"info describes {len(scales)} outputs but {path} has {len(outs)}; pass the "
                                    "TFLiteExportInfo returned by the export of this file")
    else:
        scales = [float(d["quantization"][0]) if d["dtype"] == np.int8 else None for d in outs]
    nhwc = bool(info.nhwc_input) if info is not None else False

    diffs, refs_max, problems, batches = collect_diffs(lambda batch: run_tflite(it, batch, nhwc), reference,
                                                       inputs, names, "TFLite model")
    outputs = [output_parity(names[i], diffs[i], refs_max[i], scales[i], config) for i in range(len(outs))]
    return parity_report(path, outputs, batches, problems, config, strict=strict, runtime="LiteRT")
