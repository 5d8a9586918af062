"""Run a zoo model through ``compress quantize`` as a user would, and measure what came out.

:func:`run_zoo_model` writes the trained model's state dict and its calibration / test data as ``.npz`` files,
runs ``python -m compress.cli quantize MODEL --arch tests.zoo.models:CLS --calib calib.npz --eval test.npz
--format onnx,tflite -o OUT`` in a fresh process from the repository root (one crashing runtime cannot take
the caller down, and nothing the test process imported leaks in), then judges the files itself, in their
runtimes: the task metric of the fp32 and int8 files, their size ratio, and which conv / linear / matmul ops
run with an int8 kernel. Nothing is taken from report.json that can be measured from the files.

Shared by ``tests/zoo/test_zoo_pipeline.py`` and ``scripts/zoo_status.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import METRICS, Split
from .train import ZOO, train_result

REPO_ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("onnx", "tflite")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}

# ONNX ops that compute a conv / linear / matmul. Integer kernels count as int8 as they are; Conv / MatMul /
# Gemm / ConvTranspose count when both data inputs arrive through DequantizeLinear (onnxruntime fuses such QDQ
# groups into QLinearConv / QLinearMatMul). A float LSTM is float (onnxruntime's int8 LSTM is
# DynamicQuantizeLSTM, DequantizeLinear'd weights only save space). GRU / RNN have no int8 kernel in
# onnxruntime: they are listed as exempt, not counted.
ONNX_INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
                     "MatMulIntegerToFloat", "QGemm", "DynamicQuantizeLSTM", "QAttention"}
ONNX_QDQ_KERNELS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
ONNX_FLOAT_ONLY = {"LSTM"}
ONNX_NO_INT8_KERNEL = {"GRU", "RNN"}
# TFLite: (input index of the activation, input index of the weight) per op.
TFLITE_OPS = {"CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "FULLY_CONNECTED": (0, 1), "TRANSPOSE_CONV": (2, 1),
              "BATCH_MATMUL": (0, 1), "UNIDIRECTIONAL_SEQUENCE_LSTM": (0, 2), "CONV_3D": (0, 1)}


@dataclass
class Coverage:
    """Conv / linear / matmul ops in one file: how many run int8, and the names of those that do not."""

    total: int = 0
    int8: int = 0
    float_ops: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)  # ops the runtime has no int8 kernel for (not counted)

    @property
    def all_int8(self) -> bool:
        return self.total > 0 and self.int8 == self.total


@dataclass
class FormatResult:
    written: bool = False
    verified: bool = False  # written, and the pipeline's parity check in the runtime passed
    fp32_metric: float | None = None
    int8_metric: float | None = None
    size_ratio: float | None = None
    coverage: Coverage | None = None
    parity: dict | None = None
    error: str | None = None  # first error line of a run with only this format (when the joint run failed)


@dataclass
class ZooRun:
    name: str
    arch: str
    rc: int | None = None
    error: str | None = None  # first error line of the joint --format onnx,tflite run
    seconds: float = 0.0
    torch_metric: float | None = None
    metric: str = ""
    capture: str | None = None
    float_ops: list[dict] = field(default_factory=list)
    formats: dict[str, FormatResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- inputs / CLI


def extract_rev(rev: str, dest: Path) -> Path:
    """``compress/`` at ``rev`` plus this checkout's ``tests/zoo`` in ``dest``: run a zoo against an older
    revision of the package (scripts/zoo_status.py and benchmarks/run_zoo.py ``--rev``)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "compress"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    zoo = dest / "tests" / "zoo"
    zoo.mkdir(parents=True)
    for src in (REPO_ROOT / "tests" / "zoo").glob("*.py"):
        (zoo / src.name).write_bytes(src.read_bytes())
    return dest


def write_npz(path: Path, split: Split, *, labels: bool) -> Path:
    """Save a split as the .npz the CLI reads. Labels go in only when they are one class index per sample.

    One input is saved as ``x`` (the documented single-input format, whatever forward() calls it); several
    inputs keep forward()'s parameter names (``input_ids``, ``attention_mask``), as issue 7 specifies.
    """
    arrays = {"x": split.x} if len(split.inputs) == 1 else dict(split.inputs)
    if labels and split.y.ndim == 1:
        arrays["y"] = split.y
    np.savez(path, **arrays)
    return path


def first_error_line(stderr: str, stdout: str = "") -> str | None:
    """The CLI's one-line ``error: ...`` (or the last line of a traceback), without ANSI colour codes."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in (stderr + "\n" + stdout).splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if ln.startswith(("error:", "internal error:")):
            return ln
    return lines[-1] if lines else None


def run_cli(args: list[str], timeout: float, root: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python -m compress.cli ARGS`` from ``root``: ``compress`` and ``tests.zoo`` are imported from there
    (``python -m`` puts the working directory first on ``sys.path``, ahead of the installed package)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def quantize_args(model_file: Path, arch: str, calib: Path, test: Path, out: Path, formats: tuple[str, ...]):
    return ["quantize", str(model_file), "--arch", arch, "--calib", str(calib), "--eval", str(test),
            "--format", ",".join(formats), "-o", str(out)]


# ------------------------------------------------------------------------------------------- runtimes


def _feeds(names: list[str], split: Split) -> list[np.ndarray]:
    # Inputs by name when the file kept forward()'s parameter names, else in forward()'s order.
    if all(n in split.inputs for n in names):
        return [split.inputs[n] for n in names]
    return list(split.inputs.values())[:len(names)]


def run_onnx(path: Path, split: Split) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ins = sess.get_inputs()
    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    arrays = [a.astype(dtypes.get(i.type, a.dtype)) for i, a in
              zip(ins, _feeds([i.name for i in ins], split), strict=True)]
    batch = 64 if not isinstance(ins[0].shape[0], int) else ins[0].shape[0]  # fixed batch: feed that many
    outs = []
    for start in range(0, len(split), batch):
        outs.append(sess.run(None, {i.name: a[start:start + batch] for i, a in zip(ins, arrays, strict=True)})[0])
    return np.concatenate(outs)


def run_tflite(path: Path, split: Split) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    ins = interp.get_input_details()
    out = interp.get_output_details()[0]
    arrays = _feeds([d["name"] for d in ins], split)
    if len(arrays) != len(ins):  # names did not match and counts differ: feed in order anyway
        arrays = list(split.inputs.values())
    results = []
    for k in range(len(split)):  # one sample at a time: the files are written with batch 1
        for d, a in zip(ins, arrays, strict=True):
            x = a[k:k + 1]
            scale, zero = d["quantization"]
            if d["dtype"] in (np.int8, np.uint8) and scale:  # --int8-io files take quantized inputs
                x = np.clip(np.round(x / scale) + zero, -128 if d["dtype"] == np.int8 else 0, 127 if d["dtype"] == np.int8 else 255)
            interp.set_tensor(d["index"], x.astype(d["dtype"]).reshape(d["shape"]))
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        scale, zero = out["quantization"]
        if out["dtype"] in (np.int8, np.uint8) and scale:
            y = (y - zero) * scale
        results.append(y)
    return np.concatenate(results)


RUNNERS = {"onnx": run_onnx, "tflite": run_tflite}


# ------------------------------------------------------------------------------------------- int8 coverage


def onnx_coverage(path: Path) -> Coverage:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    cov = Coverage()
    for node in graph.node:
        label = f"{node.op_type}:{node.name}"
        if node.op_type in ONNX_INT8_KERNELS:
            cov.total += 1
            cov.int8 += 1
        elif node.op_type in ONNX_QDQ_KERNELS:
            cov.total += 1
            if all(producer.get(i) == "DequantizeLinear" for i in node.input[:2] if i):
                cov.int8 += 1
            else:
                cov.float_ops.append(label)
        elif node.op_type in ONNX_FLOAT_ONLY:
            cov.total += 1
            cov.float_ops.append(label)
        elif node.op_type in ONNX_NO_INT8_KERNEL:
            cov.exempt.append(label)
    return cov


def tflite_coverage(path: Path) -> Coverage:
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    int8_types = {tflite.TensorType.INT8, tflite.TensorType.UINT8}
    cov = Coverage()
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for k in range(sub.OperatorsLength()):
            op = sub.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
            if name not in TFLITE_OPS:
                continue
            cov.total += 1
            act, weight = TFLITE_OPS[name]
            types = [sub.Tensors(op.Inputs(i)).Type() if op.Inputs(i) >= 0 else None for i in (act, weight)]
            # Full int8 (int8 activations) or dynamic range (int8 weights read by the kernel itself); a weight
            # that went through DEQUANTIZE into a float kernel is float compute (weight-only), not int8.
            if types[0] in int8_types or types[1] in int8_types:
                cov.int8 += 1
            else:
                w = op.Inputs(weight)

                def constant(t: int, sub=sub) -> bool:  # a tensor with data in the file: a weight, not activation
                    return model.Buffers(sub.Tensors(t).Buffer()).DataLength() > 0

                # weight-only: a *constant* int8 weight behind DEQUANTIZE; a dequantized activation (attention's
                # K or V) into a float matmul is plain float compute.
                dequantized = w >= 0 and any(
                    names.get(max(model.OperatorCodes(p.OpcodeIndex()).BuiltinCode(),
                                  model.OperatorCodes(p.OpcodeIndex()).DeprecatedBuiltinCode())) == "DEQUANTIZE"
                    and p.Outputs(0) == w and constant(p.Inputs(0))
                    for p in (sub.Operators(j) for j in range(sub.OperatorsLength())))
                cov.float_ops.append(f"{name}#{k}" + (" (weight-only)" if dequantized else ""))
    return cov


COVERAGE = {"onnx": onnx_coverage, "tflite": tflite_coverage}


def _file_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")  # ONNX external weights, if a file was written that way
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def measure_format(fmt: str, out: Path, test: Split, metric: str, report: dict | None) -> FormatResult:
    """Judge one format's files in ``out``: written, verified (report parity), metrics, size, coverage."""
    res = FormatResult()
    int8, fp32 = out / f"model{SUFFIX[fmt]}", out / f"model_fp32{SUFFIX[fmt]}"
    res.written = int8.is_file() and fp32.is_file()
    if not res.written:
        return res
    section = (report or {}).get("formats", {}).get(fmt, {})
    res.parity = section.get("parity")
    res.verified = bool(res.parity) and res.parity.get("passed", True) is not False
    res.size_ratio = _file_bytes(int8) / _file_bytes(fp32)
    try:
        res.coverage = COVERAGE[fmt](int8)
    except Exception as exc:  # a file the parser rejects is itself a finding; keep measuring the rest
        res.error = f"coverage: {type(exc).__name__}: {exc}".splitlines()[0]
    try:
        res.fp32_metric = METRICS[metric](RUNNERS[fmt](fp32, test), test.y)
        res.int8_metric = METRICS[metric](RUNNERS[fmt](int8, test), test.y)
    except Exception as exc:
        res.error = res.error or f"running {fmt}: {type(exc).__name__}: {exc}".splitlines()[0]
    return res


# ------------------------------------------------------------------------------------------- one model


def run_zoo_model(name: str, workdir: Path, *, formats: tuple[str, ...] = FORMATS, timeout: float = 600,
                  split_on_failure: bool = True, max_test: int = 400, root: Path = REPO_ROOT) -> ZooRun:
    """Quantize zoo model ``name`` with the CLI into ``workdir`` and measure the result (never raises for
    pipeline failures: they land in ``.error`` / ``.formats[fmt].error``).

    ``root`` is the source tree whose ``compress`` runs (default: this checkout; ``scripts/zoo_status.py
    --rev`` passes an extracted commit so a half-edited working tree does not decide the table).
    """
    entry = ZOO[name]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = ZooRun(name=name, arch=entry.arch, metric=entry.metric)
    t0 = time.perf_counter()
    trained = train_result(name)
    run.torch_metric = trained.metric
    test = trained.test.take(max_test)
    model_file = workdir / "model.pt"
    torch.save(trained.model.state_dict(), model_file)
    calib = write_npz(workdir / "calib.npz", trained.calib, labels=True)
    test_npz = write_npz(workdir / "test.npz", test, labels=True)

    def attempt(fmts: tuple[str, ...], out: Path) -> tuple[int | None, str | None, dict | None]:
        try:
            proc = run_cli(quantize_args(model_file, entry.arch, calib, test_npz, out, fmts), timeout, root)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s", None
        report_file = out / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else None
        return proc.returncode, (None if proc.returncode == 0 else first_error_line(proc.stderr, proc.stdout)), report

    out = workdir / "out"
    run.rc, run.error, report = attempt(formats, out)
    if report:
        run.capture, run.float_ops = report.get("capture"), report.get("float_ops", [])
    for fmt in formats:
        run.formats[fmt] = measure_format(fmt, out, test, entry.metric, report) if run.rc == 0 else FormatResult()
    if run.rc != 0 and split_on_failure and len(formats) > 1:
        # The joint run leaves nothing behind when any format fails; one run per format says which one broke
        # and still measures the other.
        for fmt in formats:
            rc, err, rep = attempt((fmt,), workdir / f"out_{fmt}")
            res = measure_format(fmt, workdir / f"out_{fmt}", test, entry.metric, rep) if rc == 0 else FormatResult()
            res.error = err if rc != 0 else res.error
            run.formats[fmt] = res
            if rep and run.capture is None:
                run.capture, run.float_ops = rep.get("capture"), rep.get("float_ops", [])
    run.seconds = time.perf_counter() - t0
    return run
