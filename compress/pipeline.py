"""The end-to-end job behind ``compress quantize`` and ``compress demo``.

float model → fp32 ONNX (baseline) → prepare → calibrate [→ QAT] → convert → int8 ONNX → verify in
onnxruntime → accuracy, size, latency → ``report.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import ConfigError, DataError, ExportError
from compress.passes import QATConfig, calibrate, convert, prepare, train_qat
from compress.quant.config import QuantConfig
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

    def quant_config(self) -> QuantConfig:
        weight = WEIGHT_INT8_PER_TENSOR if self.per_tensor else WEIGHT_INT8
        return QuantConfig(weight=weight, observer=self.observer)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["observer"], d["target"] = self.observer.value, self.target.value
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
    """Quantize ``model`` to int8, export ONNX, verify it in onnxruntime and write ``report.json``.

    Args:
        model: the trained float model.
        calib: calibration :class:`compress.io.Dataset` (representative inputs; labels unused).
        out_dir: directory for ``model.onnx`` (int8), ``model_fp32.onnx`` and ``report.json``.
        options: see :class:`QuantizeOptions`.
        eval_data: labelled Dataset for accuracy (defaults to the calibration set, for parity only).
        train_data: labelled Dataset for QAT (required when ``options.qat``).
        progress: progress bars.

    Returns:
        The report (also written to ``out_dir/report.json``).

    Example:
        >>> from compress.io import Dataset
        >>> from compress.models import DemoCNN
        >>> data = Dataset(np.random.rand(16, 1, 8, 8).astype("float32"), None, "random")
        >>> report = quantize_model(DemoCNN(), data, "/tmp/compress-doctest", progress=False)
        >>> report["parity"]["within_1lsb_fraction"] > 0.99
        True
    """
    from compress.exporters.onnx import ActivationDType, OnnxExportConfig, export_onnx
    from compress.exporters.verify import verify_onnx

    options = options or QuantizeOptions()
    if options.qat and train_data is None:
        raise DataError("QAT needs labelled training data; pass --train DATA (an .npz with x and y)")
    if len(calib) == 0:
        raise DataError("the calibration set is empty; pass at least one representative input")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    model = model.cpu().eval()
    example = (torch.from_numpy(calib.x[:1]),)
    evaluation = eval_data if eval_data is not None else calib

    t0 = time.perf_counter()
    prepared = prepare(model, example, options.quant_config(), qat=options.qat)
    if prepared.compress_info.capture != "fx":
        why = next((f.reason for f in prepared.compress_info.float_ops if f.op == "*"), "")
        raise ExportError(
            f"{type(model).__name__} cannot be captured as a graph ({why}); ONNX export needs a torch.fx-traceable "
            "model: move data-dependent `if`/loops out of forward(), or quantize the layers with compress.passes "
            "in Python and deploy the simulated model"
        )
    prepare_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    fp32_path = out_dir / "model_fp32.onnx"
    fp32_info = export_onnx(model, example, fp32_path, OnnxExportConfig(opset=options.opset))
    timings["export_fp32_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    calibrate(prepared, calib, batch_size=options.batch_size, max_batches=options.max_calib_batches,
              progress=progress)
    timings["calibrate_s"] = time.perf_counter() - t0 + prepare_s
    history = None
    if options.qat:
        t0 = time.perf_counter()
        history = train_qat(prepared, train_data, QATConfig(epochs=options.epochs, lr=options.lr,
                                                            batch_size=options.batch_size), progress=progress)
        timings["qat_s"] = time.perf_counter() - t0
    int8_model = convert(prepared)

    t0 = time.perf_counter()
    dtype = ActivationDType.UINT8 if options.target is Target.X86 else ActivationDType.INT8
    int8_path = out_dir / "model.onnx"
    int8_info = export_onnx(int8_model, example, int8_path, OnnxExportConfig(opset=options.opset,
                                                                             activation_dtype=dtype))
    timings["export_int8_s"] = time.perf_counter() - t0

    eval_x = evaluation.x[:512]
    parity = verify_onnx(int8_path, int8_model, _batches(eval_x, options.batch_size), info=int8_info)
    fp32_logits = _onnx_predict(fp32_path, evaluation.x, options.batch_size)
    int8_logits = _onnx_predict(int8_path, evaluation.x, options.batch_size)

    info = prepared.compress_info
    report = {
        "version": REPORT_VERSION,
        "model": {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                  "input_shape": list(example[0].shape)},
        "options": options.to_dict(),
        "capture": info.capture,
        "quantized_layers": info.quantized_layers,
        "float_ops": [asdict(f) for f in info.float_ops],
        "fp32": _summary(fp32_path, fp32_logits, evaluation, eval_x, options.latency_runs),
        "int8": _summary(int8_path, int8_logits, evaluation, eval_x, options.latency_runs),
        "parity": parity.to_dict(),
        "onnx": {"opset": int8_info.opset, "activation_dtype": int8_info.activation_dtype.value,
                 "fp32_opset": fp32_info.opset},
        "artifacts": [
            {"path": "model.onnx", "format": "onnx-qdq-int8", "bytes": int8_path.stat().st_size},
            {"path": "model_fp32.onnx", "format": "onnx-fp32", "bytes": fp32_path.stat().st_size},
        ],
        "timings": timings,
    }
    if _is_classifier(fp32_logits, int8_logits):
        report["int8"]["top1_agreement"] = float(np.mean(fp32_logits.argmax(-1) == int8_logits.argmax(-1)))
    report["int8"]["size_ratio"] = report["int8"]["bytes"] / report["fp32"]["bytes"]
    if history is not None:
        report["qat"] = {"epochs": options.epochs, "loss_per_epoch": history}
    write_json_atomic(out_dir / "report.json", report)
    return report


def _is_classifier(*logits: np.ndarray) -> bool:
    return all(lg.ndim == 2 and lg.shape[1] > 1 for lg in logits)


def _batches(x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnx_predict(path: Path, x: np.ndarray, batch_size: int) -> np.ndarray:
    sess = _session(path)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: b})[0] for b in _batches(x, batch_size)]
    return np.concatenate(outs)


def _median_latency_ms(path: Path, x: np.ndarray, runs: int) -> float:
    # One sample at a time (the edge case: batch 1). Sequential sessions in one process are fine; it is
    # *interleaving* multi-threaded sessions that distorts (see compress bench for paired comparisons).
    sess = _session(path)
    name = sess.get_inputs()[0].name
    feed = {name: x[:1]}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def _summary(path: Path, logits: np.ndarray, data, eval_x: np.ndarray, runs: int) -> dict:
    out = {"bytes": path.stat().st_size, "latency_ms_median": _median_latency_ms(path, eval_x, runs),
           "latency_threads": 1}
    if data.y is not None and logits.ndim == 2:
        out["accuracy"] = float(np.mean(logits.argmax(-1) == data.y))
    return out


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temp file beside ``path`` and rename it into place (never a half-written file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_summary(report: dict):
    """A rich Table: fp32 vs int8 accuracy, size, latency, parity — what the CLI prints."""
    from rich.table import Table

    table = Table(title=f"compress quantize — {report['model']['class']}", title_justify="left")
    for col in ("", "accuracy", "top-1 agree", "size", "latency (1 thr)"):
        table.add_column(col, justify="right" if col else "left")
    for key, label in (("fp32", "ONNX fp32"), ("int8", "ONNX int8")):
        r = report[key]
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "–"
        agree = f"{100 * r['top1_agreement']:.2f}%" if "top1_agreement" in r else "–"
        table.add_row(label, acc, agree, _human_bytes(r["bytes"]), f"{r['latency_ms_median']:.3f} ms")
    p = report["parity"]
    table.caption = (
        f"int8 size {100 * report['int8']['size_ratio']:.0f}% of fp32 · parity vs torch simulation: "
        f"{100 * p['within_1lsb_fraction']:.2f}% within 1 LSB, max {p['max_abs_lsb']:.0f} LSB · "
        f"float ops: {len(report['float_ops'])}"
    )
    return table


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
