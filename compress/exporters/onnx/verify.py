"""Prove an exported ONNX file computes what the torch simulation computes, in onnxruntime.

:func:`verify_onnx` checks the file with ``onnx.checker``, runs it in onnxruntime (CPU, one intra-op thread
by default) and hands the outputs to the shared comparison (:mod:`compress.exporters.verify`). Given the
converted graph (``graph=``), it also verifies op by op (:mod:`compress.exporters.verify_ops`): a copy of
the model lists as graph outputs the QuantizeLinear value of every fx node the export recorded
(``ExportInfo.probe_values``), so each op's int8 output in onnxruntime is compared with the simulation of
that op fed onnxruntime's own inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from torch import fx, nn

from compress.errors import DataError, VerificationError, require
from compress.exporters.onnx.export import OnnxExportInfo
from compress.exporters.verify import (
    ParityReport,
    VerifyConfig,
    as_batch,
    collect_diffs,
    output_parity,
    parity_report,
)
from compress.exporters.verify_ops import LayerwiseParity, Probe, approximated_ops, layerwise_parity

__all__ = ["verify_onnx"]


def ort_session(model, config: VerifyConfig):
    """An onnxruntime CPU session as verification runs it (``config``'s threads, warnings silenced) over a path
    or a ModelProto (a copy exposing intermediate values). onnxruntime's own errors propagate to the caller."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def verify_onnx(path, reference: Callable | nn.Module, inputs: Iterable, *, info: OnnxExportInfo,
                config: VerifyConfig | None = None, strict: bool = False,
                graph: fx.GraphModule | None = None) -> ParityReport:
    """Run ``path`` in onnxruntime and ``reference`` in torch on the same inputs; compare the outputs.

    Args:
        path: the ``.onnx`` file (from :func:`~compress.exporters.export_onnx`).
        reference: the torch simulation (the converted model) or any callable taking the input tensors.
        inputs: batches; each an array/tensor, or a tuple of them for multi-input models.
        info: the export's :class:`OnnxExportInfo` (output scales tell which outputs are int8).
        config: thresholds and thread count (default: :class:`VerifyConfig`'s).
        strict: raise :class:`VerificationError` (with the figures) when the contract is not met.
        graph: the converted GraphModule ``path`` was exported from: verify op by op too; the file then
            passes on the op-by-op rule and the end-to-end figures are information.

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
    path = str(path)
    try:
        onnx.checker.check_model(path)
    except (onnx.checker.ValidationError, OSError) as exc:
        raise VerificationError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0]}); "
                                "re-export it with export_onnx") from exc
    try:
        session = ort_session(path, config)
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

    inputs = list(inputs)
    diffs, refs_max, problems, batches = collect_diffs(run, reference, inputs, out_names, "ONNX model")
    layerwise = None
    if graph is not None and info.quantized:
        from compress.exporters.onnx.verify_dynamic import dynamic_onnx_layerwise, has_dynamic_layers

        # Dynamic layers have no int8 output to probe: their own rule (verify_dynamic.py).
        check = dynamic_onnx_layerwise if has_dynamic_layers(graph) else onnx_layerwise
        layerwise = check(path, graph, inputs, info=info, config=config, session=session)
    outputs = [
        output_parity(name, diffs[i], refs_max[i], scales[i][0] if scales[i] is not None else None, config,
                      tolerances[i] if i < len(tolerances) else None)
        for i, name in enumerate(out_names)
    ]
    return parity_report(path, outputs, batches, problems, config, strict=strict, runtime="onnxruntime",
                         layerwise=layerwise)


def onnx_probes(model, graph: fx.GraphModule, values: dict[str, str] | None = None
                ) -> tuple[list[Probe], dict[str, str]]:
    """The int8 values of ``model`` (an ``onnx.ModelProto``) that hold an fx node's output, and the fx nodes
    on an int8 grid that have none (a quantizer on its input's grid writes no QuantizeLinear of its own).

    ``values``: fx node name → the QuantizeLinear output holding it, as the export recorded it
    (``ExportInfo.probe_values``: the file's value names are short and say nothing of the model). Without
    it (an ExportInfo made by hand), a value named ``<fx node>/QuantizeLinear`` (``readable_names=True``) is
    that node's.
    """
    numpy_helper = require("onnx", "onnx").numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = {n.name for n in graph.graph.nodes}
    quantizes = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    if not values:
        suffix = "/QuantizeLinear"
        values = {}
        for out in quantizes:
            if out.endswith(suffix):
                values.setdefault(out[:-len(suffix)], out)
    probes, seen = [], set()
    for fx_name, key in values.items():
        node = quantizes.get(key)
        if node is None or fx_name not in names:
            continue
        scale = consts.get(node.input[1])
        zero = consts.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zero is None or scale.size != 1:
            continue
        seen.add(fx_name)
        probes.append(Probe(fx_name, key, float(scale.reshape(())), int(zero.reshape(()))))
    modules = dict(graph.named_modules())
    unprobed = {n.name: "no QuantizeLinear of its own in the file (on its input's grid)" for n in graph.graph.nodes
                if n.op == "call_module" and type(modules.get(n.target)).__name__ == "Quantizer" and n.name not in seen}
    return probes, unprobed


def onnx_layerwise(path, graph: fx.GraphModule, inputs: Iterable, *, info: OnnxExportInfo,
                   config: VerifyConfig | None = None, session=None) -> LayerwiseParity:
    """Op-by-op parity of the ONNX file ``path`` against ``graph`` (see :mod:`compress.exporters.verify_ops`).

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.onnx import export_onnx
        >>> from compress.io import Dataset
        >>> from compress.passes import calibrate, convert, prepare
        >>> from compress.quant.config import QuantConfig
        >>> x = torch.randn(8, 4); p = prepare(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), (x[:1],), QuantConfig())
        >>> _ = calibrate(p, Dataset(x.numpy(), None, "doc"), progress=False); q = convert(p)
        >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx"); info = export_onnx(q, (x[:1],), path)
        >>> onnx_layerwise(path, q, [(x.numpy(),)], info=info).passed
        True
    """
    config = config if config is not None else VerifyConfig()
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    probes, unprobed = onnx_probes(model, graph, getattr(info, "probe_values", None))
    finals = [o.name for o in model.graph.output]
    # A QuantizeLinear output has its zero point's type (uint8 or int8 storage).
    zero_types = {t.name: t.data_type for t in model.graph.initializer}
    out_types = {n.output[0]: zero_types.get(n.input[2], onnx.TensorProto.UINT8) if len(n.input) > 2
                 else onnx.TensorProto.UINT8 for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for p in probes:
        if p.key not in finals:
            model.graph.output.append(onnx.helper.make_tensor_value_info(p.key, out_types[p.key], None))
    try:
        probed = ort_session(model, config)
    except Exception as exc:  # onnxruntime's own error types: judge the file end to end instead
        return LayerwiseParity("onnxruntime", False, 0, 0, config.max_op_lsb,
                               unchecked=[f"*: onnxruntime cannot load the copy exposing the intermediate values "
                                          f"({str(exc).splitlines()[0][:200]})"])
    in_names = [i.name for i in probed.get_inputs()]
    keys = [p.key for p in probes]
    changed = False

    def run(batch):
        nonlocal changed
        feeds = dict(zip(in_names, batch, strict=True))
        got = probed.run(finals + keys, feeds)
        if session is not None:
            plain = session.run(finals, feeds)
            changed |= any(not np.array_equal(a, b) for a, b in zip(plain, got[:len(finals)], strict=True))
        return dict(zip(keys, got[len(finals):], strict=True)), got[:len(finals)]

    report = layerwise_parity(graph, run, [as_batch(b) for b in inputs], probes, runtime="onnxruntime",
                              max_op_lsb=config.max_op_lsb, float_rtol=config.float_rtol,
                              approximated=approximated_ops(info), unchecked=unprobed,
                              output_tolerances=getattr(info, "output_tolerances", None))
    report.instrumentation_changed_outputs = changed
    return report

