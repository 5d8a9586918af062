"""Prove an exported ONNX file computes what the torch simulation computes, in onnxruntime.

:func:`verify_onnx` checks the file with ``onnx.checker``, runs it in onnxruntime (CPU, one intra-op thread
by default) and hands the outputs to the shared comparison (:mod:`compress.exporters.verify`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from torch import nn

from compress.errors import DataError, VerificationError, require
from compress.exporters.onnx.export import OnnxExportInfo
from compress.exporters.verify import (
    ParityReport,
    VerifyConfig,
    collect_diffs,
    output_parity,
    parity_report,
)

__all__ = ["verify_onnx"]


def verify_onnx(path, reference: Callable | nn.Module, inputs: Iterable, *, info: OnnxExportInfo,
                config: VerifyConfig | None = None, strict: bool = False) -> ParityReport:
    """Run ``path`` in onnxruntime and ``reference`` in torch on the same inputs; compare the outputs.

    Args:
        path: the ``.onnx`` file (from :func:`~compress.exporters.export_onnx`).
        reference: the torch simulation (the converted model) or any callable taking the input tensors.
        inputs: batches; each an array/tensor, or a tuple of them for multi-input models.
        info: the export's :class:`OnnxExportInfo` (output scales tell which outputs are int8).
        config: thresholds and thread count (default: :class:`VerifyConfig`'s).
        strict: raise :class:`VerificationError` (with the figures) when the contract is not met.

    Returns:
        A :class:`ParityReport`.

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.onnx import export_onnx
        >>> m = nn.Linear(4, 2).eval(); p = os.path.join(tempfile.mkdtemp(), "m.onnx")
        >>> info = export_onnx(m, (torch.randn(1, 4),), p)
        >>> verify_onnx(p, m, [np.ones((3, 4), np.float32)], info=info).passed
        True
    """
    config = config if config is not None else VerifyConfig()
    onnx = require("onnx", "onnx")
    ort = require("onnxruntime", "onnx")
    path = str(path)
    try:
        onnx.checker.check_model(path)
    except (onnx.checker.ValidationError, OSError) as exc:
        raise VerificationError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0]}); "
                                "re-export it with export_onnx") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise VerificationError(f"onnxruntime cannot load {path} ({str(exc).splitlines()[0]}); "
                                "re-export it, or report the op named in the message") from exc
    in_names = [i.name for i in session.get_inputs()]
    out_names = [o.name for o in session.get_outputs()]
    scales = list(info.output_scales)
    tolerances = list(getattr(info, "output_tolerances", None) or [None] * len(scales))
    if len(scales) != len(out_names):
        raise VerificationError(f"info describes {len(scales)} outputs but {path} has {len(out_names)}; "
                                "pass the OnnxExportInfo returned by the export of this file")

    def run(batch: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        if len(batch) != len(in_names):
            raise DataError(f"a verification batch has {len(batch)} arrays but the model takes "
                            f"{len(in_names)} inputs ({', '.join(in_names)})")
        return session.run(None, dict(zip(in_names, batch, strict=True)))

    diffs, refs_max, problems, batches = collect_diffs(run, reference, inputs, out_names, "ONNX model")
    outputs = [
        output_parity(name, diffs[i], refs_max[i], scales[i][0] if scales[i] is not None else None, config,
                      tolerances[i] if i < len(tolerances) else None)
        for i, name in enumerate(out_names)
    ]
    return parity_report(path, outputs, batches, problems, config, strict=strict, runtime="onnxruntime")
