"""The end-to-end job behind ``compress quantize`` and ``compress demo``.

float model → fp32 ONNX (baseline) → prepare → calibrate [→ QAT] → convert → int8 ONNX → verify in
onnxruntime → accuracy, size, latency → ``report.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
from torch import nn

from compress.errors import ConfigError, DataError, ExportError, QualityError, VerificationError
from compress.exporters.verify_ops import failure_message
from compress.io.atomic import write_json_atomic
from compress.io.fit import match_model_dtype
from compress.ops.coverage import check_coverage
from compress.passes import QATConfig, calibrate, convert, prepare, train_qat
from compress.passes.ptq import PTQConfig, apply_after_calibration, apply_before_calibration
from compress.passes.sensitivity import SensitivityConfig, plan_layer_modes
from compress.quant.config import QuantConfig, QuantMode, parse_mode
from compress.quant.spec import WEIGHT_INT8, WEIGHT_INT8_PER_TENSOR, ObserverKind

REPORT_VERSION = 1


class Target(str, Enum):
    """Where the int8 model will run; picks the ONNX activation type measured fastest there."""

    X86 = "x86"  # uint8 activations: onnxruntime's u8s8 kernels (×1.8 vs fp32 here; s8s8 ×1.1)
    ARM = "arm"  # int8 activations: the native type of ARM dot-product kernels and of TFLite


@dataclass(frozen=True)
class QuantizeOptions:
    """Options of :func:`quantize_model` (the CLI builds exactly this)."""

    per_tensor: bool = False
    observer: ObserverKind = ObserverKind.MINMAX
    target: Target = Target.X86
    qat: bool = False
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 32
    opset: int = 17
    max_calib_batches: int | None = None
    latency_runs: int = 50
    formats: tuple = ("onnx",)
    tflite_int8_io: bool = False
    accept_degraded: bool = False  # return a collapsed int8 model (warnings in the report) instead of QualityError
    keep_unverified: bool = False  # return (and write) a report marking a failed verification, no VerificationError
    ptq: tuple = ()  # advanced PTQ techniques (compress.passes.ptq.Technique names), e.g. ("cle", "adaround")
    # Quantization mode of every weight layer, and per-layer overrides by module path (QuantConfig's): see
    # compress.quant.config.QuantMode. A model-level mode that picks per layer ("auto") resolves to these.
    mode: QuantMode = QuantMode.STATIC
    layer_modes: Mapping[str, QuantMode] = field(default_factory=dict)
    # --max-drop / --mode auto: layer modes chosen from measured sensitivity before prepare (the plan replaces
    # mode / layer_modes above; report.json "sensitivity").
    sensitivity: SensitivityConfig | None = None

    def __post_init__(self):
        for name, enum in (("observer", ObserverKind), ("target", Target)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise ConfigError(f"unknown {name} {value!r}; choose one of: {choices}") from None
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {self.batch_size}")
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        try:
            formats = tuple(dict.fromkeys(Format(f) for f in formats))
        except ValueError:
            raise ConfigError(f"unknown format in {self.formats!r}; choose from: onnx, tflite") from None
        if not formats:
            raise ConfigError("formats must name at least one of: onnx, tflite")
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "ptq", tuple(t.value for t in PTQConfig.parse(self.ptq).techniques))
        object.__setattr__(self, "mode", parse_mode(self.mode))
        object.__setattr__(self, "layer_modes", {k: parse_mode(v, f"mode of layer {k!r}")
                                                 for k, v in dict(self.layer_modes).items()})

    def quant_config(self) -> QuantConfig:
        weight = WEIGHT_INT8_PER_TENSOR if self.per_tensor else WEIGHT_INT8
        return QuantConfig(weight=weight, observer=self.observer, mode=self.mode, layer_modes=self.layer_modes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["observer"], d["target"] = self.observer.value, self.target.value
        d["formats"] = [f.value for f in self.formats]
        d["mode"], d["layer_modes"] = self.mode.value, {k: v.value for k, v in self.layer_modes.items()}
        return d


def quantize_model(
    model: nn.Module,
    calib,
    out_dir: Path | str,
    options: QuantizeOptions | None = None,
    *,
    eval_data=None,
    train_data=None,
    progress: bool = True,
) -> dict:
    """Quantize ``model`` to int8, export it, verify every file in its runtime and write ``report.json``.

    Args:
        model: the trained float model.
        calib: calibration :class:`compress.io.Dataset` (representative inputs; labels unused). Several inputs
            are bound to ``forward``'s parameters by name (:func:`compress.io.bind_inputs`) and fed to every
            step, file and runtime.
        out_dir: directory for ``model.onnx`` (int8), ``model_fp32.onnx`` (and ``model.tflite`` /
            ``model_fp32.tflite`` with the tflite format) and ``report.json``.
        options: see :class:`QuantizeOptions`.
        eval_data: labelled Dataset for accuracy (defaults to the calibration set, for parity only).
        train_data: labelled Dataset for QAT (required when ``options.qat``).
        progress: progress bars.

    Returns:
        The report (also written to ``out_dir/report.json``). Top-level ``fp32`` / ``int8`` / ``parity`` are
        the ONNX figures (the first format); each format also has its own section under ``formats``.

    Example:
        >>> from compress.io import Dataset
        >>> from compress.models import DemoCNN
        >>> data = Dataset(np.random.rand(16, 1, 8, 8).astype("float32"), None, "random")
        >>> report = quantize_model(DemoCNN(), data, "/tmp/compress-doctest", progress=False)
        >>> report["parity"]["within_1lsb_fraction"] > 0.99
        True
    """
    options = options or QuantizeOptions()
    if options.qat and train_data is None:
        raise DataError("QAT needs labelled training data; pass --train DATA (an .npz with x and y)")
    if len(calib) == 0:
        raise DataError("the calibration set is empty; pass at least one representative input")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    model = model.cpu().eval()
    calib, eval_data, train_data = (d if d is None else match_model_dtype(model, d) for d in (calib, eval_data,
                                                                                          train_data))
    example = calib.example(1)  # one tensor per input, in forward's order (match_model_dtype bound them)
    evaluation = eval_data if eval_data is not None else calib

    sensitivity = None
    if options.sensitivity is not None:
        t0 = time.perf_counter()
        sensitivity = plan_layer_modes(model, calib, evaluation, options.quant_config(), options.sensitivity,
                                       batch_size=options.batch_size, max_calib_batches=options.max_calib_batches,
                                       table=False, progress=progress)
        options = replace(options, mode=sensitivity.mode, layer_modes={**options.layer_modes,
                                                                       **sensitivity.layer_modes})
        timings["sensitivity_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepared = prepare(model, example, options.quant_config(), qat=options.qat)
    if prepared.compress_info.capture == "module_swap":  # "export" and "fx" both give a graph
        why = next((f.reason for f in prepared.compress_info.float_ops if f.op == "*"), "")
        raise ExportError(
            f"{type(model).__name__} cannot be captured as a graph ({why}); export needs a torch.fx-traceable "
            "model: move data-dependent `if`/loops out of forward(), or quantize the layers with compress.passes "
            "in Python and deploy the simulated model"
        )
    # Before the long work: an op a requested format cannot write fails now, naming the user's source line.
    check_coverage(prepared, tuple(f.value for f in options.formats))
    ptq = PTQConfig.parse(options.ptq)
    ptq_report = apply_before_calibration(prepared, calib, ptq)
    calibrate(prepared, calib, batch_size=options.batch_size, max_batches=options.max_calib_batches,
              progress=progress)
    timings["calibrate_s"] = time.perf_counter() - t0
    ptq_report |= apply_after_calibration(prepared, calib, ptq, progress=progress)
    history = None
    if options.qat:
        t0 = time.perf_counter()
        history = train_qat(prepared, train_data, QATConfig(epochs=options.epochs, lr=options.lr,
                                                            batch_size=options.batch_size), progress=progress)
        timings["qat_s"] = time.perf_counter() - t0
    int8_model = convert(prepared)

    info = prepared.compress_info
    report: dict = {
        "version": REPORT_VERSION,
        "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                  "input_shape": list(example[0].shape),
                  "inputs": {name: list(t.shape) for name, t in zip(calib.names, example, strict=True)}},
        "options": options.to_dict(),
        "capture": info.capture,
        "quantized_layers": info.quantized_layers,
        "layer_modes": info.layer_modes,
        "float_ops": [asdict(f) for f in info.float_ops],
        "formats": {},
        "artifacts": [],
        "timings": timings,
        "ptq": ptq_report,
    }
    if sensitivity is not None:
        report["sensitivity"] = sensitivity.to_dict()
    int8_outputs = {}
    for fmt in options.formats:
        backend = _BACKENDS[fmt]
        section, int8_outputs[fmt] = _run_backend(backend, model, int8_model, example, out_dir, options,
                                                  evaluation, timings)
        report["formats"][fmt.value] = section
        report["artifacts"] += section.pop("artifacts")
    for fmt, section in report["formats"].items():
        for entry in section["export"].pop("float_fallbacks", []):
            name, _, op = entry.partition(" (")
            listed = [f for f in report["float_ops"] if f["name"] == name]
            if listed:  # already listed by prepare (e.g. a layer with no quantized implementation)
                listed[0]["reason"] += f"; {fmt}: exported as a float subgraph"
                continue
            report["float_ops"].append({"name": name, "op": op.rstrip(")") or name,
                                        "reason": f"no {fmt} mapping: exported as a float subgraph"})
    primary = report["formats"][options.formats[0].value]
    report.update(fp32=primary["fp32"], int8=primary["int8"], parity=primary["parity"])
    if "onnx" in report["formats"]:
        report["onnx"] = report["formats"]["onnx"]["export"]
    if Format.ONNX in int8_outputs and Format.TFLITE in int8_outputs:
        lsb = report["formats"]["onnx"]["export"].get("output_lsb")
        diff = np.abs(int8_outputs[Format.ONNX] - int8_outputs[Format.TFLITE])
        cross = {"max_abs_diff": float(diff.max())}
        if lsb:
            cross["within_1lsb_fraction"] = float(np.mean(diff <= lsb * 1.001))
            cross["max_abs_lsb"] = float(diff.max() / lsb)
        report["formats"]["tflite"]["int8_vs_onnx_int8"] = cross
    if history is not None:
        report["qat"] = {"epochs": options.epochs, "loss_per_epoch": history}
    # Which set every accuracy / agreement / parity figure was measured on: without --eval it is the
    # calibration set, which the int8 model was tuned on, so it is not a test accuracy.
    first = next(iter(int8_outputs.values()))
    report["evaluated_on"] = {"set": "eval" if eval_data is not None else "calibration",
                              "source": str(evaluation.source), "samples": len(evaluation),
                              "classes": int(first.shape[1]) if first.ndim == 2 else None}
    collapse, report["warnings"] = quality_warnings(report)
    if sensitivity is not None and not sensitivity.within_budget:
        report["warnings"].append(sensitivity.warning())
    failed = {fmt: sec["parity"] for fmt, sec in report["formats"].items() if not sec["parity"].get("passed", True)}
    report["verified"] = not failed
    report["verification_failure"] = failure_message(*next(iter(failed.items()))) if failed else None
    write_json_atomic(out_dir / "report.json", report)
    if failed and not options.keep_unverified:
        raise VerificationError(f"{report['verification_failure']}; --keep-unverified writes the files and "
                                "report.json anyway")
    if collapse and not options.accept_degraded:
        raise QualityError(f"{collapse}; {_COLLAPSE_FIX['qat' if options.qat else 'ptq']}, or pass "
                           "--accept-degraded to keep this result")
    return report


COLLAPSE_AGREEMENT = 0.5  # int8 picks another class than fp32 on most inputs: the model is broken, not degraded
WARN_AGREEMENT = 0.9
WARN_ACCURACY_DROP = 0.05
_COLLAPSE_FIX = {"qat": "QAT destroyed it: lower --lr (e.g. 1e-4) or use fewer --epochs",
                 "ptq": "try --observer percentile or mse, or --qat with --train DATA"}


def quality_warnings(report: dict) -> tuple[str | None, list[str]]:
    """(why the int8 result is unusable or None, warnings to show) from a report's figures.

    Example:
        >>> r = {"evaluated_on": {"set": "eval", "samples": 100, "classes": 10}, "formats": {"onnx": {
        ...     "fp32": {"accuracy": 0.9}, "int8": {"accuracy": 0.1, "top1_agreement": 0.11}}}}
        >>> quality_warnings(r)[0]
        'the int8 onnx model collapsed: its top-1 agrees with fp32 on 11.0% of 100 eval samples (< 50%)'
    """
    where = report["evaluated_on"]
    on = f"{where['samples']} {where['set']} samples"
    collapse, warns = None, []
    for fmt, section in report["formats"].items():
        fp32, int8 = section["fp32"], section["int8"]
        agree = int8.get("top1_agreement")
        # An error only when the labels show the outputs are class scores the fp32 model gets right (well
        # above chance); argmax agreement of an embedding or a regression output means little.
        classifies = "accuracy" in fp32 and fp32["accuracy"] >= 1.5 / (where.get("classes") or 2)
        if agree is not None and agree < COLLAPSE_AGREEMENT:
            why = (f"the int8 {fmt} model collapsed: its top-1 agrees with fp32 on {100 * agree:.1f}% of {on} "
                   f"(< {100 * COLLAPSE_AGREEMENT:.0f}%)")
            collapse = collapse or (why if classifies else None)
            warns.append(why if classifies else why.replace("collapsed", "may have collapsed")
                         + " (ignore this if the outputs are not class scores)")
        elif agree is not None and agree < WARN_AGREEMENT:
            warns.append(f"int8 {fmt} top-1 agrees with fp32 on only {100 * agree:.1f}% of {on}")
        if "accuracy" in fp32 and fp32["accuracy"] - int8["accuracy"] > WARN_ACCURACY_DROP:
            warns.append(f"int8 {fmt} accuracy {100 * int8['accuracy']:.2f}% is "
                         f"{100 * (fp32['accuracy'] - int8['accuracy']):.1f} points below fp32 on {on}")
    if where["set"] == "calibration" and any("accuracy" in sec["fp32"] for sec in report["formats"].values()):
        warns.append("accuracy was measured on the calibration set (no --eval): it is not a test accuracy; "
                     "pass --eval DATA with held-out samples")
    return collapse, warns


class Format(str, Enum):
    """Artifact formats :func:`quantize_model` writes."""

    ONNX = "onnx"
    TFLITE = "tflite"


@dataclass(frozen=True)
class _Backend:
    """How one format is exported, verified and run (the pipeline treats all formats alike)."""

    fmt: Format
    runtime: str
    suffix: str
    export: Callable  # (model, example, path, options, quantized) -> export info
    verify: Callable  # (path, int8_model, batches, info) -> ParityReport
    runner: Callable  # (path, threads) -> callable(tuple of input arrays, forward's order) -> first output


def _run_backend(backend: _Backend, model, int8_model, example, out_dir: Path, options: QuantizeOptions,
                 evaluation, timings: dict) -> tuple[dict, np.ndarray]:
    paths = {kind: out_dir / f"{stem}{backend.suffix}" for kind, stem in (("fp32", "model_fp32"), ("int8", "model"))}
    infos = {}
    for kind, src in (("fp32", model), ("int8", int8_model)):
        t0 = time.perf_counter()
        infos[kind] = backend.export(src, example, paths[kind], options, kind == "int8")
        timings[f"export_{backend.fmt.value}_{kind}_s"] = time.perf_counter() - t0
    eval_x = tuple(a[:512] for a in evaluation.arrays)  # every input, in forward's order
    parity = backend.verify(paths["int8"], int8_model, _batches(eval_x, options.batch_size), infos["int8"])
    runners = {kind: backend.runner(paths[kind], 1) for kind in ("fp32", "int8")}  # one session per file
    logits = {kind: _predict(run, evaluation.arrays, options.batch_size) for kind, run in runners.items()}
    section: dict = {"runtime": backend.runtime, "parity": parity.to_dict(), "artifacts": []}
    for kind in ("fp32", "int8"):
        path = paths[kind]
        summary = {"bytes": path.stat().st_size,
                   "latency_ms_median": _median_latency_ms(runners[kind], eval_x, options),
                   "latency_threads": 1}
        if evaluation.y is not None and logits[kind].ndim == 2:
            summary["accuracy"] = float(np.mean(logits[kind].argmax(-1) == evaluation.y))
        section[kind] = summary
        fmt_name = f"{backend.fmt.value}-{'int8' if kind == 'int8' else 'fp32'}"
        section["artifacts"].append({"path": path.name, "format": fmt_name, "bytes": summary["bytes"]})
    if _is_classifier(logits["fp32"], logits["int8"]):
        section["int8"]["top1_agreement"] = float(np.mean(logits["fp32"].argmax(-1) == logits["int8"].argmax(-1)))
    section["int8"]["size_ratio"] = section["int8"]["bytes"] / section["fp32"]["bytes"]
    section["export"] = _export_summary(infos["int8"])
    return section, logits["int8"]


def _export_summary(info) -> dict:
    d = info.to_dict()
    keep = {k: d[k] for k in ("opset", "activation_dtype", "schema_version", "op_histogram", "op_counts",
                              "float_fallbacks") if k in d}
    if isinstance(keep.get("activation_dtype"), Enum):
        keep["activation_dtype"] = keep["activation_dtype"].value
    scales = [s for s in getattr(info, "output_scales", []) or [] if s is not None]
    if scales:
        first = scales[0]
        keep["output_lsb"] = float(first[0] if isinstance(first, tuple | list) else first)
    return keep


def _export_onnx(model, example, path, options: QuantizeOptions, quantized: bool):
    from compress.exporters.onnx import ActivationDType, OnnxExportConfig, export_onnx

    dtype = ActivationDType.UINT8 if options.target is Target.X86 else ActivationDType.INT8
    return export_onnx(model, example, path, OnnxExportConfig(opset=options.opset, activation_dtype=dtype))


def _verify_onnx(path, int8_model, batches, info):
    from compress.exporters.onnx import verify_onnx

    return verify_onnx(path, int8_model, batches, info=info, graph=_graph_of(int8_model))


def _onnx_runner(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]  # the file's inputs are forward's parameters, in order
    return lambda batch: sess.run(None, dict(zip(names, batch, strict=True)))[0]


def _export_tflite(model, example, path, options: QuantizeOptions, quantized: bool):
    from compress.exporters.tflite import TFLiteExportConfig, export_tflite

    return export_tflite(model, example, path, TFLiteExportConfig(int8_io=options.tflite_int8_io and quantized))


def _verify_tflite(path, int8_model, batches, info):
    from compress.exporters.tflite.verify import verify_tflite

    return verify_tflite(path, int8_model, batches, info=info, graph=_graph_of(int8_model))


def _graph_of(int8_model):
    """The converted graph, for op-by-op verification (a module-swapped model has none: end to end only)."""
    from torch import fx

    return int8_model if isinstance(int8_model, fx.GraphModule) else None


def _tflite_runner(path: Path, threads: int):
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    interpreter = load_interpreter(path, threads)
    return lambda batch: run_tflite(interpreter, batch)[0]


_BACKENDS = {
    Format.ONNX: _Backend(Format.ONNX, "onnxruntime", ".onnx", _export_onnx, _verify_onnx, _onnx_runner),
    Format.TFLITE: _Backend(Format.TFLITE, "litert", ".tflite", _export_tflite, _verify_tflite, _tflite_runner),
}


def _is_classifier(*logits: np.ndarray) -> bool:
    return all(lg.ndim == 2 and lg.shape[1] > 1 for lg in logits)


def _batches(arrays: tuple[np.ndarray, ...], batch_size: int) -> list[tuple[np.ndarray, ...]]:
    """Batches of every input together: ``[(a[0:b], m[0:b]), ...]``."""
    n = len(arrays[0])
    return [tuple(a[i:i + batch_size] for a in arrays) for i in range(0, n, batch_size)]


def _predict(run, arrays: tuple[np.ndarray, ...], batch_size: int) -> np.ndarray:
    return np.concatenate([run(b) for b in _batches(arrays, batch_size)])


def _median_latency_ms(run, eval_x: tuple[np.ndarray, ...], options: QuantizeOptions) -> float:
    # One sample at a time (the edge case: batch 1). Sequential sessions in one process are fine; it is
    # *interleaving* multi-threaded sessions that distorts (compress bench does paired, isolated runs).
    x = tuple(a[:1] for a in eval_x)
    for _ in range(5):
        run(x)
    times = []
    for _ in range(options.latency_runs):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def render_summary(report: dict):
    """A rich Table and its notes: fp32 vs int8 accuracy, size, latency and parity per runtime (the CLI's output)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"compress quantize — {report['model']['class']}", title_justify="left")
    on = report.get("evaluated_on", {}).get("set", "eval")
    for col in ("runtime", f"accuracy ({on})", "agree", "size", "latency", "parity"):
        table.add_column(col, justify="left" if col == "runtime" else "right", no_wrap=True)
    runtime_names = {"onnx": "onnxruntime", "tflite": "LiteRT"}
    for fmt, section in report["formats"].items():
        p = section["parity"]
        for kind in ("fp32", "int8"):
            r = section[kind]
            acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "–"
            agree = f"{100 * r['top1_agreement']:.2f}%" if "top1_agreement" in r else "–"
            size = _human_bytes(r["bytes"])
            if kind == "int8":
                size += f" ({100 * r['size_ratio']:.0f}%)"
                # None for float outputs (dynamic / weight-only models: compared in float, no LSB)
                parity = f"{100 * p['within_1lsb_fraction']:.1f}%" if p.get("within_1lsb_fraction") is not None \
                    else ("float ✓" if p.get("passed") else "–")
                probed = (p.get("layerwise") or {}).get("ops")
                if probed:  # the verdict is op by op; the end-to-end figure is information
                    parity = f"{'✓' if p.get('passed') else '✗'} {probed} ops · {parity}"
            else:
                parity = ""
            table.add_row(f"{runtime_names.get(fmt, fmt)} {kind}", acc, agree, size,
                          f"{r['latency_ms_median']:.3f} ms", parity)
    ops = report["float_ops"]
    where = report.get("evaluated_on")
    measured = (f"accuracy, agree and parity on {where['samples']} samples of the {where['set']} set "
                f"({Path(where['source']).name}) · " if where else "")
    notes = Text(
        measured + "agree: top-1 agreement with fp32 · latency: median, batch 1, 1 thread · parity: ops within 1 LSB "
        "of the simulation given the same inputs (✓/✗) · outputs within 1 LSB end to end · ops left in float: "
        + (", ".join(f"{f['name']} ({f['op']})" for f in ops[:5]) if ops else "none"), style="dim")
    # Notes below the table, not a caption: a caption wraps to the table's width even when piped to a file.
    return Group(table, notes)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
