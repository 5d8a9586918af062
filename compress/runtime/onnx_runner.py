"""Measure one onnxruntime session: load time, per-run latency statistics, peak resident memory.

Measure one session per process (see :mod:`compress.runtime.isolate`): several multi-threaded sessions in
one process share thread pools and caches and distort each other's timings.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from compress.errors import ConfigError, DataError, ModelLoadError, require
from compress.runtime.stats import LatencyStats

# onnxruntime's type strings for the inputs we can synthesise.
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes.

    Linux: ``VmHWM`` from /proc, which belongs to this process image alone. ``getrusage``'s ``ru_maxrss``
    is the fallback only, because Linux carries it over fork + exec: a measurement child would report its
    parent's peak whenever that was larger (measured here: 1.2 GB for every child of a benchmark parent).
    """
    hwm = _proc_status_bytes("VmHWM:")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_bytes() -> int | None:
    """Current resident set size in bytes from /proc (Linux), or None where it is not available."""
    return _proc_status_bytes("VmRSS:")


def _load_inputs(inputs, session) -> dict[str, np.ndarray]:
    metas = session.get_inputs()
    if inputs is None:
        # Synthesise inputs from the model's declared shapes; dynamic dimensions cannot be guessed.
        rng = np.random.default_rng(0)
        feeds = {}
        for meta in metas:
            if any(not isinstance(d, int) or d < 0 for d in meta.shape):
                raise ConfigError(
                    f"input {meta.name!r} has a dynamic shape {meta.shape}; pass inputs (an .npz or arrays)"
                )
            dtype = _ORT_DTYPES.get(meta.type)
            if dtype is None:
                raise ConfigError(f"cannot synthesise input {meta.name!r} of type {meta.type}; pass inputs")
            if np.issubdtype(dtype, np.floating):
                feeds[meta.name] = rng.standard_normal(meta.shape).astype(dtype)
            else:
                feeds[meta.name] = rng.integers(0, 2, size=meta.shape).astype(dtype)
        return feeds
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.is_file():
            raise DataError(f"input file {path} does not exist; write the inputs with numpy.savez first")
        with np.load(path) as npz:
            inputs = {k: npz[k] for k in npz.files}
    if not isinstance(inputs, Mapping):
        raise ConfigError("inputs must be a mapping of input name to array, an .npz path, or None")
    names = [m.name for m in metas]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise DataError(f"inputs lack {missing} (the model takes {names}); name the arrays after the model inputs")
    return {n: np.ascontiguousarray(inputs[n]) for n in names}


def measure_onnx(
    path: str | os.PathLike,
    inputs: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    threads: int = 1,
    warmup: int = 10,
    runs: int = 50,
    seconds: float | None = None,
    batch: int = 1,
) -> dict:
    """Create one onnxruntime CPU session and time ``session.run`` on fixed inputs.

    Args:
        path: the ``.onnx`` file.
        inputs: arrays keyed by input name, an ``.npz`` holding them (what subprocesses get), or None to
            synthesise random inputs from the model's static input shapes.
        threads: intra-op threads (inter-op is 1: sequential execution, so ``threads`` is the whole budget).
        warmup: untimed runs first (allocations, kernel selection, caches).
        runs: timed runs (at least this many).
        seconds: if set, keep running until this much timed wall time has passed too.
        batch: items per run, for the throughput.

    Returns:
        A JSON-ready dict: ``latency`` (:class:`LatencyStats` fields, seconds), ``samples_s`` (every timed
        run), ``session_create_s``, ``import_s``, ``peak_rss_bytes`` (whole process), ``rss_before_bytes``
        (after imports, before the session), ``threads``, ``file_bytes``, ``pid``, ``onnxruntime``.

    Example:
        >>> r = measure_onnx("model.onnx", threads=1, warmup=2, runs=10)  # doctest: +SKIP
        >>> r["latency"]["median"]  # doctest: +SKIP
    """
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if runs < 1 or warmup < 0:
        raise ConfigError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    model = Path(path)
    if not model.is_file():
        raise ModelLoadError(f"ONNX file {model} does not exist; check the path or export the model first")

    t0 = time.perf_counter()
    ort = require("onnxruntime", "core")
    import_s = time.perf_counter() - t0
    rss_before = current_rss_bytes()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt / unsupported files
        raise ModelLoadError(f"onnxruntime cannot load {model}: {exc}".splitlines()[0]
                             + "; re-export the model or check the opset") from exc
    create_s = time.perf_counter() - t0

    feeds = _load_inputs(inputs, session)
    run = session.run
    for _ in range(warmup):
        run(None, feeds)
    samples: list[float] = []
    clock = time.perf_counter
    start = clock()
    # The timed loop is kept bare (one clock pair per run) so the harness adds as little as possible.
    while len(samples) < runs or (seconds is not None and clock() - start < seconds):
        t = clock()
        run(None, feeds)
        samples.append(clock() - t)
    stats = LatencyStats.from_seconds(samples, batch=batch)
    return {
        "latency": stats.to_dict(),
        "samples_s": samples,
        "session_create_s": create_s,
        "import_s": import_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_bytes": rss_before,
        "threads": threads,
        "file_bytes": model.stat().st_size,
        "pid": os.getpid(),
        "onnxruntime": ort.__version__,
    }
