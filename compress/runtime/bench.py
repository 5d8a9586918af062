"""The benchmark engine behind ``compress bench``: artifacts × runtimes × thread counts, measured fairly.

How a figure is made (the why is in :mod:`compress.runtime.isolate`):

1. Every measurement is a fresh process holding one session (locally, or on a device over SSH), running the
   runner script :mod:`compress.runtime._device_runner`: warm-up, then a bare timed loop.
2. The contenders alternate round by round (A B C, B C A, ...; :func:`compress.runtime.compare_interleaved`),
   so drift of the machine's speed hits them alike.
3. Latency statistics pool every timed run of every round; ratios against the first artifact are computed
   within each round and summarised with their spread across rounds as the noise estimate.
4. With ``data``, one more process per artifact and runtime computes the top-1 class of every sample: the
   accuracy when the data has labels, and the agreement with the first artifact.

The result is a plain JSON-ready dict whose keys are documented in ``docs/bench.md`` (``schema`` names the
version); :mod:`compress.runtime.report` and :mod:`compress.runtime.plot` render it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import ConfigError, DataError, ModelLoadError
from compress.runtime.isolate import Contender, compare_interleaved
from compress.runtime.runners import LocalExecutor, Runtime, artifact_suffix, runtimes_for
from compress.runtime.stats import LatencyStats

SCHEMA = "compress.bench/1"

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how. Defaults here are the CLI's defaults.

    Args:
        runtimes: runtimes to use, each on the artifacts it can load; None: each file's default runtime.
        threads: thread counts; every contender is measured at each.
        warmup: untimed runs per process before timing.
        runs: timed runs per process (ignored when ``seconds`` is set).
        seconds: time each process for this long instead of a fixed number of runs.
        rounds: alternated rounds (processes per contender); ≥ 3 gives a noise estimate worth reading.
        batch: items per run (the batch dimension of synthesised inputs; the throughput counts items).
        input_shapes: ``(input name, shape)`` pairs for dimensions the file leaves dynamic; name ``""`` is the
            first input.
        data: an ``.npz`` with ``x`` (or one array per model input, named after it) and ``y`` labels, to time
            on real inputs and to measure accuracy.
        pin: pin each measured process to ``threads`` cores (Linux).
        arch: ``MODULE:CALLABLE`` building the model a ``.pt``/``.pth`` state dict is loaded into.
        timeout: seconds one process may take.

    Example:
        >>> BenchConfig(threads=(1, 2), rounds=3).threads
        (1, 2)
    """

    runtimes: tuple[Runtime, ...] | None = None
    threads: tuple[int, ...] = (1,)
    warmup: int = 10
    runs: int = 50
    seconds: float | None = None
    rounds: int = 5
    batch: int = 1
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    data: str | None = None
    pin: bool = False
    arch: str | None = None
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.threads or any(not isinstance(t, int) or t < 1 for t in self.threads):
            raise ConfigError(f"thread counts must be integers >= 1, got {list(self.threads)}; e.g. --threads 1,2")
        if len(set(self.threads)) != len(self.threads):
            raise ConfigError(f"thread counts repeat in {list(self.threads)}; list each once")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.runs < 1:
            raise ConfigError(f"--runs must be >= 1, got {self.runs}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"--seconds must be > 0, got {self.seconds}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout}")
        for name, shape in self.input_shapes:
            if not shape or any(d < 1 for d in shape):
                raise ConfigError(f"--input-shape {name + ':' if name else ''}{','.join(map(str, shape))} needs "
                                  "positive dimensions, e.g. 1,3,224,224")


@dataclass(frozen=True)
class BenchContender:
    """One row of the benchmark: an artifact in a runtime at a thread count.

    Example:
        >>> BenchContender("model.onnx ort 1t", "model.onnx", "model.onnx", Runtime.ORT, 1).runtime.label
        'onnxruntime'
    """

    id: str
    artifact: str
    name: str
    runtime: Runtime
    threads: int
    baseline: str | None = field(default=None, compare=False)


def plan(artifacts: Sequence[str | os.PathLike], config: BenchConfig) -> list[BenchContender]:
    """The contenders, in measuring order: artifact by artifact, runtime by runtime, thread count by count.

    Each gets its baseline: the first artifact in its first runtime at the same thread count (itself: None).

    Raises:
        ModelLoadError: an artifact is missing, not a file, or of an unknown format.
        ConfigError: no requested runtime can run an artifact.
    """
    if not artifacts:
        raise ConfigError("no artifacts to benchmark; pass at least one .onnx / .tflite / .pt2 file")
    paths = [str(a) for a in artifacts]
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise ModelLoadError(f"{p} does not exist; check the path (export a model with `compress export`)")
        if not path.is_file():
            raise ModelLoadError(f"{p} is not a file; pass the model file itself")
        artifact_suffix(p)
        if path.suffix.lower() in (".pt", ".pth") and not config.arch:
            raise ConfigError(f"{p} is a PyTorch state dict; pass --arch MODULE:CALLABLE that builds the model")
    if len(set(paths)) != len(paths):
        raise ConfigError(f"an artifact is listed twice in {paths}; list each once")
    names = _display_names(paths)
    out: list[BenchContender] = []
    first_runtime = runtimes_for(paths[0], config.runtimes)[0]
    for p, name in zip(paths, names, strict=True):
        for runtime in runtimes_for(p, config.runtimes):
            for t in config.threads:
                cid = f"{name} {runtime.value} {t}t"
                base = f"{names[0]} {first_runtime.value} {t}t"
                out.append(BenchContender(cid, p, name, runtime, t, None if base == cid else base))
    return out


def _display_names(paths: list[str]) -> list[str]:
    """Base names, or paths relative to their common folder when base names repeat."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
    return [str(Path(p).resolve().relative_to(common)) for p in paths]


def check_data(path: str) -> dict:
    """Validate a ``--data`` file here, before any process starts (its fit to the model is checked there).

    The inputs are ``x``, or one array per model input named after it (``input_ids``, ``attention_mask``) or
    ``x0, x1, ...``; ``y`` holds labels. The runner feeds each array to the model input of its name.

    Returns:
        ``{"path", "samples", "labels"}``.

    Raises:
        DataError: missing, unreadable, no input array, empty, non-finite, inputs of different lengths, or
            labels that do not match.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {path} does not exist; pass an .npz with x (and y labels)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            names = [n for n in npz.files if n != "y"]
            if not names:
                raise DataError(f"{path} has no input arrays (found {npz.files}); save inputs with "
                                "np.savez(f, x=x, y=y), or one array per model input named after it")
            arrays = {n: npz[n] for n in names}
            y = npz["y"] if "y" in npz.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({type(exc).__name__}); write it with numpy.savez") from exc
    for name, x in arrays.items():
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"{path}: {name} is empty; it needs one sample per row")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"{path}: {name} holds NaN or inf; clean the data")
    counts = {name: len(x) for name, x in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{path}: the inputs have different sample counts ({counts}); give every input one row "
                        "per sample")
    n = next(iter(counts.values()))
    of = "x" if names == ["x"] else "the inputs"
    if y is not None and (y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"{path}: y must hold one integer label per sample of {of} ({n}), got {y.dtype} "
                        f"{list(y.shape)}")
    return {"path": str(p), "samples": int(n), "labels": y is not None}


def _request(c: BenchContender, where: Mapping[str, str], config: BenchConfig) -> dict:
    return {
        "runtime": c.runtime.value, "path": where[c.artifact], "threads": c.threads, "warmup": config.warmup,
        "runs": config.runs if config.seconds is None else 1, "seconds": config.seconds, "batch": config.batch,
        "input_shapes": {name: list(shape) for name, shape in config.input_shapes},
        "data": where.get(config.data) if config.data else None, "pin": config.pin, "arch": config.arch,
    }


def run_bench(
    artifacts: Sequence[str | os.PathLike],
    config: BenchConfig | None = None,
    *,
    executor=None,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Benchmark artifacts: latency, throughput, load time, peak memory, size, and accuracy with ``data``.

    Args:
        artifacts: model files (``.onnx``, ``.tflite``, ``.pt2``, ``.pt``/``.pth`` with ``config.arch``). The
            first is the baseline of every ratio.
        config: a :class:`BenchConfig` (default: one thread, 5 rounds of 50 runs).
        executor: where processes run: a :class:`~compress.runtime.runners.LocalExecutor` (default) or an
            opened :class:`~compress.runtime.remote.RemoteDevice`; tests pass fakes with the same methods
            (``stage``, ``call``, ``describe``).
        device: the device address to record in the report (None: this machine).
        progress: ``progress(done, total, what)`` after each process.

    Returns:
        The report dict (keys in ``docs/bench.md``): ``schema``, ``created_utc``, ``settings``, ``machine``,
        ``host``, ``baseline``, ``results`` (one per contender: ``latency_ms``, ``throughput_per_s``,
        ``load_s``, ``peak_rss_bytes``, ``file_bytes``, ``accuracy``, ``agreement``, ``vs_baseline``, ...).

    Example:
        >>> r = run_bench(["fp32.onnx", "int8.onnx"], BenchConfig(threads=(1, 2), rounds=3))  # doctest: +SKIP
        >>> r["results"][1]["vs_baseline"]["median"]["ratio"]  # doctest: +SKIP
    """
    config = config or BenchConfig()
    contenders = plan(artifacts, config)
    data_info = check_data(config.data) if config.data else None
    executor = executor or LocalExecutor(timeout=config.timeout)
    files = list(dict.fromkeys(c.artifact for c in contenders)) + ([config.data] if config.data else [])
    where = executor.stage(files)
    machine = executor.describe()

    pairs = list(dict.fromkeys((c.artifact, c.runtime) for c in contenders)) if config.data else []
    total = config.rounds * len(contenders) + len(pairs)
    by_id = {c.id: c for c in contenders}

    def measure(fn: str, kwargs: dict) -> dict:
        c = by_id[kwargs["id"]]
        result = executor.call(fn, _request(c, where, config), artifact=c.artifact)
        result["latency"] = LatencyStats.from_seconds(result["samples_s"], batch=config.batch).to_dict()
        return result

    def step(done: int, _total: int, name: str) -> None:
        if progress is not None:
            progress(done, total, name)

    started = dt.datetime.now(dt.timezone.utc)
    comparison = compare_interleaved([Contender(c.id, "measure", {"id": c.id}) for c in contenders],
                                     rounds=config.rounds, runner=measure, progress=step)
    evaluations: dict[tuple[str, Runtime], dict] = {}
    for i, (artifact, runtime) in enumerate(pairs):
        c = next(c for c in contenders if c.artifact == artifact and c.runtime == runtime)
        request = dict(_request(c, where, config), threads=max(config.threads), pin=False)
        evaluations[(artifact, runtime)] = executor.call("evaluate", request, artifact=artifact)
        step(config.rounds * len(contenders) + i + 1, total, f"accuracy of {c.name} ({runtime.value})")

    results = [_result(c, comparison, config, evaluations, contenders) for c in contenders]
    host = None
    if device is not None:
        from compress.runtime.machine import machine_description

        host = machine_description()
    return {
        "schema": SCHEMA,
        "created_utc": started.isoformat(timespec="seconds"),
        "settings": {
            "artifacts": [str(a) for a in artifacts], "runtimes": [r.value for r in config.runtimes or ()] or None,
            "threads": list(config.threads), "warmup": config.warmup,
            "runs": None if config.seconds is not None else config.runs, "seconds": config.seconds,
            "rounds": config.rounds, "batch": config.batch,
            "input_shapes": {name: list(shape) for name, shape in config.input_shapes} or None,
            "data": data_info, "pin": config.pin, "device": device, "order": comparison.order,
        },
        "machine": machine,
        "host": host,
        "baseline": contenders[0].id,
        "results": results,
    }


def _result(c: BenchContender, comparison, config: BenchConfig, evaluations: dict, contenders) -> dict:
    rounds = comparison.results[c.id]
    samples = [s for r in rounds for s in r["samples_s"]]
    stats = LatencyStats.from_seconds(samples, batch=config.batch)
    ms = stats.to_ms_dict()
    loads = sorted(r["load_s"] for r in rounds)
    first_runs = sorted(r["first_run_s"] for r in rounds)
    out = {
        "id": c.id,
        "artifact": c.artifact,
        "name": c.name,
        "runtime": c.runtime.value,
        "runtime_label": c.runtime.label,
        "runtime_version": rounds[0].get("runtime_version"),
        "threads": c.threads,
        "batch": config.batch,
        "input_shapes": rounds[0].get("input_shapes"),
        "file_bytes": rounds[0].get("file_bytes"),
        "latency_ms": {k: ms[k] for k in ("median", "p90", "p99", "mean", "std", "min")},
        "runs": stats.runs,
        "throughput_per_s": stats.throughput,
        "round_medians_ms": [r["latency"]["median"] * 1e3 for r in rounds],
        "round_mins_ms": [r["latency"]["min"] * 1e3 for r in rounds],
        "load_s": loads[len(loads) // 2],
        "first_run_ms": first_runs[len(first_runs) // 2] * 1e3,
        "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0) for r in rounds) or None,
        "cpus": rounds[0].get("cpus"),
        "accuracy": None,
        "agreement": None,
        "eval_samples": None,
        "vs_baseline": None,
    }
    ev = evaluations.get((c.artifact, c.runtime))
    if ev is not None:
        base = evaluations[(contenders[0].artifact, contenders[0].runtime)]
        out["accuracy"] = ev["accuracy"]
        out["eval_samples"] = ev["samples"]
        if ev is not base:
            agree = sum(a == b for a, b in zip(ev["predictions"], base["predictions"], strict=True))
            out["agreement"] = agree / max(len(base["predictions"]), 1)
    if c.baseline is not None:
        out["vs_baseline"] = {
            "baseline": c.baseline,
            "median": comparison.ratio(c.id, c.baseline, "median").to_dict(),
            "min": comparison.ratio(c.id, c.baseline, "min").to_dict(),
        }
    return out
