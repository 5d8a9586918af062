"""Build the contenders' ONNX files from one float model: fp32 baseline, the peer's int8, and ours.

Each builder returns an ``Artifact``; a contender that cannot be built (our exporter missing, an export
error) becomes an artifact with ``error`` set, so the run still reports the others.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Artifact:
    name: str
    path: Path | None
    build_s: float = 0.0
    error: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None and self.path.is_file()

    def to_dict(self) -> dict:
        out = {"name": self.name, "path": str(self.path) if self.path else None, "build_s": self.build_s,
               "error": self.error, **self.info}
        if self.ok:
            out["bytes"] = self.path.stat().st_size
        return out


def onnx_opsets(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def export_fp32(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Artifact:
    """fp32 baseline with torch.onnx.export (dynamo exporter, the default; weights inside the file)."""
    t0 = time.perf_counter()
    # The dynamo exporter narrates each stage on stdout; keep the benchmark's output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (example,), str(path), external_data=False)
    art = Artifact("fp32", path, time.perf_counter() - t0)
    # torch picks the opset it wants (DESIGN.md: asked-for opsets were silently ignored); record what we got.
    art.info["opset"] = onnx_opsets(path)
    art.info["exporter"] = f"torch.onnx.export (dynamo) torch {torch.__version__}"
    return art


def quantize_peer(fp32: Path, calib: np.ndarray, input_name: str, out_dir: Path) -> Artifact:
    """onnxruntime.quantization.quantize_static: QDQ, per-channel int8 weights, uint8 activations (u8s8)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self._it, None)

    t0 = time.perf_counter()
    pre = out_dir / "peer_preprocessed.onnx"
    path = out_dir / "peer_ort_int8.onnx"
    # quant_pre_process's symbolic shape inference writes sym_shape_infer_temp.onnx and external-data files into
    # the working directory, not next to its output: run it inside out_dir.
    with contextlib.chdir(out_dir.resolve()):
        quant_pre_process(str(fp32.resolve()), str(pre.resolve()))
    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    art = Artifact("peer", path, time.perf_counter() - t0)
    art.info.update(opset=onnx_opsets(path), tool=f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}",
                    settings="QDQ, per_channel=True, activations QUInt8, weights QInt8, MinMax, after quant_pre_process")
    return art


def quantize_ours(model: torch.nn.Module, example: torch.Tensor, calib: torch.Tensor, path: Path) -> Artifact:
    """Our pipeline: prepare → calibrate → convert → export_onnx (uint8 activations, the x86 target)."""
    t0 = time.perf_counter()
    try:
        from compress.exporters.onnx import ActivationDType, OnnxExportConfig, export_onnx
        from compress.passes import calibrate, convert, prepare
    except ImportError as exc:
        return Artifact("ours", None, error=f"not available yet: {exc}")
    try:
        prepared = prepare(model, (example,))
        calibrate(prepared, [calib], progress=False)
        int8 = convert(prepared)
        config = OnnxExportConfig(activation_dtype=ActivationDType.UINT8)
        export_info = export_onnx(int8, (example,), path, config)
    except Exception as exc:  # report and go on: one failing contender must not hide the others' numbers
        return Artifact("ours", None, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    art = Artifact("ours", path, time.perf_counter() - t0)
    info = prepared.compress_info
    art.info.update(opset=onnx_opsets(path), capture=info.capture,
                    float_ops=[getattr(f, "name", str(f)) for f in info.float_ops],
                    export=_plain(export_info))
    return art


def _plain(obj):
    """Best-effort JSON view of the exporter's info object."""
    if obj is None:
        return None
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def onnx_outputs(path: Path, inputs: np.ndarray, input_name: str) -> np.ndarray:
    """First output of the model for each input (batch 1, the exported shape), stacked; 1 thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: inputs[i : i + 1]})[0] for i in range(len(inputs))])


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Accuracy proxy vs fp32: top-1 agreement, max / mean absolute difference of the logits."""
    diff = np.abs(reference.astype(np.float64) - other.astype(np.float64))
    return {"top1_agreement": float(np.mean(reference.argmax(1) == other.argmax(1))),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_range": float(reference.max() - reference.min()), "inputs": int(len(reference)),
            # A random-weight net may send every input to one class; then agreement proves little. Show it.
            "distinct_top1": int(len(np.unique(reference.argmax(1))))}
