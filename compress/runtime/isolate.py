"""Run each measurement in a fresh Python process, and compare contenders by alternating such processes.

Why a process per measurement: onnxruntime sessions (and torch) own thread pools; two multi-threaded sessions
in one process contend for the same cores and caches, and measured here two copies of the *same* fp32 graph
came out 0.48–0.67× apart when interleaved in one process. A fresh process also makes the peak-RSS figure
belong to one artifact alone.

Why alternate (A B, B A, A B, ...): machine speed drifts (thermal, neighbours, frequency). Contenders measured
next to each other see the same drift, so per-round paired ratios cancel most of it, and the spread of those
ratios across rounds says how far to trust the result (:func:`compress.runtime.stats.paired_ratio`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from compress import errors
from compress.errors import CompressError, ConfigError
from compress.runtime.stats import LatencyStats, PairedRatio, paired_ratio

# Short names for the measurement functions the package ships; anything else is "module:function".
REGISTRY = {"measure_onnx": "compress.runtime.onnx_runner:measure_onnx"}

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../compress

# The child installs a bare namespace for `compress` instead of running compress/__init__.py, so a
# measurement process loads only what its function imports (not torch, when it measures onnxruntime):
# start-up stays short and the peak-RSS figure is the artifact's, not the package's.
_BOOTSTRAP = """\
import sys, types
pkg = types.ModuleType("compress")
pkg.__path__ = [sys.argv[1]]
sys.modules["compress"] = pkg
from compress.runtime.isolate import _child_main
sys.exit(_child_main(sys.argv[2], sys.argv[3]))
"""


def resolve_function(fn_name: str) -> Callable:
    """Find a measurement function by registry name (``"measure_onnx"``) or ``"module:function"``.

    Example:
        >>> resolve_function("measure_onnx").__name__
        'measure_onnx'
    """
    target = REGISTRY.get(fn_name, fn_name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"unknown measurement {fn_name!r}; use one of {sorted(REGISTRY)} or 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for measurement {fn_name!r}: {exc}; "
                          "check the module name and sys.path") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{module_name!r} has no function {attr!r}; check the measurement name")
    return fn


def _jsonable(obj):
    """Default hook for json.dump: numpy scalars/arrays and paths become plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _child_main(request_path: str, result_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    try:
        cpus = request.get("cpus")
        if cpus:
            os.sched_setaffinity(0, set(cpus))
        value = resolve_function(request["fn"])(**request["kwargs"])
        if isinstance(value, dict):
            value.setdefault("isolated_pid", os.getpid())
        result = {"ok": True, "result": value}
    except CompressError as exc:
        result = {"ok": False, "compress_error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # report everything: the parent turns it into an exception with context
        result = {"ok": False, "compress_error": None, "message": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    Path(result_path).write_text(json.dumps(result, default=_jsonable))
    return 0


def run_isolated(
    fn_name: str,
    kwargs: Mapping | None = None,
    *,
    timeout: float = 600.0,
    cpus: Sequence[int] | None = None,
) -> dict:
    """Run one measurement function in a fresh Python subprocess and return its (JSON) result.

    Args:
        fn_name: ``"measure_onnx"`` or ``"module:function"`` importable in the child (the parent's
            ``sys.path`` is passed on). The function must return something JSON-serialisable.
        kwargs: JSON-serialisable keyword arguments (pass arrays as ``.npz`` paths).
        timeout: seconds before the child is killed.
        cpus: pin the child to these CPU ids (Linux), or None to leave scheduling to the OS.

    Returns:
        The function's return value, with ``"isolated_pid"`` (the child's pid) added when it is a dict.

    Raises:
        CompressError (or the child's own subclass) for user errors in the child and for timeouts;
        RuntimeError with the child's traceback for bugs.

    Example:
        >>> r = run_isolated("measure_onnx", {"path": "model.onnx", "threads": 1})  # doctest: +SKIP
        >>> r["latency"]["median"]  # doctest: +SKIP
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
    if cpus is not None and not hasattr(os, "sched_setaffinity"):
        raise ConfigError("pinning to CPUs needs Linux (os.sched_setaffinity); drop cpus")
    with tempfile.TemporaryDirectory(prefix="compress-isolate-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        try:
            req.write_text(json.dumps({"fn": fn_name, "kwargs": dict(kwargs or {}),
                                       "cpus": list(cpus) if cpus else None}, default=_jsonable))
        except TypeError as exc:
            raise ConfigError(f"kwargs for {fn_name!r} must be JSON-serialisable ({exc}); "
                              "pass arrays as .npz paths") from None
        env = dict(os.environ)
        # The child must import what the parent can (benchmark modules, test helpers, the checkout).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, "-c", _BOOTSTRAP, str(_PACKAGE_DIR), str(req), str(res)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise CompressError(f"measurement {fn_name!r} did not finish within {timeout:g} s; "
                                "raise the timeout or lower runs") from None
        if not res.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            raise RuntimeError(f"measurement process for {fn_name!r} died (exit {proc.returncode}): "
                               + " | ".join(tail))
        outcome = json.loads(res.read_text())
    if not outcome["ok"]:
        name = outcome.get("compress_error")
        if name:
            cls = getattr(errors, name, None)
            cls = cls if isinstance(cls, type) and issubclass(cls, CompressError) else CompressError
            raise cls(outcome["message"])
        raise RuntimeError(f"measurement {fn_name!r} failed in its subprocess: {outcome['message']}\n"
                           + outcome.get("traceback", ""))
    return outcome["result"]


class Statistic(str, Enum):
    """Which per-round statistic a paired ratio compares.

    ``median`` is the default. ``min`` is the contention-robust companion: other processes only ever add
    time, so on a busy machine the per-round minima of many runs track the undisturbed speed more closely.
    """

    MEDIAN = "median"
    MIN = "min"
    MEAN = "mean"
    P90 = "p90"


@dataclass(frozen=True)
class Contender:
    """One thing to measure: a display name, a measurement function and its keyword arguments.

    Example:
        >>> Contender("fp32", "measure_onnx", {"path": "fp32.onnx", "threads": 1}).name
        'fp32'
    """

    name: str
    fn: str
    kwargs: Mapping = field(default_factory=dict)


@dataclass
class Comparison:
    """Per-round results of interleaved contenders, with pooled statistics and paired ratios.

    ``results[name][i]`` is contender ``name``'s result dict in round ``i``; each holds ``latency``
    (:class:`LatencyStats` fields) and, when the runner provides them, ``samples_s``.
    """

    names: list[str]
    rounds: int
    order: list[list[str]]
    results: dict[str, list[dict]]

    def medians(self, name: str) -> list[float]:
        """Per-round median latency (seconds) of one contender."""
        return self.per_round(name, Statistic.MEDIAN)

    def per_round(self, name: str, statistic: Statistic | str = Statistic.MEDIAN) -> list[float]:
        """One latency statistic (seconds) per round for one contender."""
        key = _statistic(statistic).value
        out = []
        for r in self._get(name):
            if key not in r["latency"]:
                raise ConfigError(f"{name!r} results have no latency.{key}; use statistic='median'")
            out.append(float(r["latency"][key]))
        return out

    def pooled(self, name: str) -> LatencyStats:
        """Statistics over all timed runs of all rounds (per-round medians when raw samples are absent)."""
        samples: list[float] = []
        for r in self._get(name):
            samples.extend(r.get("samples_s") or [r["latency"]["median"]])
        return LatencyStats.from_seconds(samples)

    def ratio(self, numerator: str, denominator: str,
              statistic: Statistic | str = Statistic.MEDIAN) -> PairedRatio:
        """Latency ratio numerator/denominator, paired round by round (< 1: the numerator is faster).

        Args:
            numerator, denominator: contender names.
            statistic: the per-round statistic compared (default the median; ``"min"`` on busy machines).
        """
        return paired_ratio(self.per_round(numerator, statistic), self.per_round(denominator, statistic))

    def _get(self, name: str) -> list[dict]:
        if name not in self.results:
            raise ConfigError(f"no contender named {name!r}; measured: {self.names}")
        return self.results[name]

    def to_dict(self) -> dict:
        """JSON-ready summary: order, per-contender pooled stats and per-round medians (raw samples dropped)."""
        out = {"rounds": self.rounds, "order": self.order, "contenders": {}}
        for name in self.names:
            first = self.results[name][0]
            out["contenders"][name] = {
                "pooled": self.pooled(name).to_dict(),
                "round_medians_s": self.medians(name),
                "round_mins_s": [float(r["latency"]["min"]) if "min" in r["latency"] else None
                                 for r in self.results[name]],
                "session_create_s": [r.get("session_create_s") for r in self.results[name]],
                "peak_rss_bytes": max((r.get("peak_rss_bytes") or 0) for r in self.results[name]) or None,
                "file_bytes": first.get("file_bytes"),
            }
        return out


def _statistic(value: Statistic | str) -> Statistic:
    try:
        return Statistic(value)
    except ValueError:
        raise ConfigError(f"unknown statistic {value!r}; use one of {[m.value for m in Statistic]}") from None


def compare_interleaved(
    contenders: Sequence[Contender],
    rounds: int = 5,
    *,
    runner: Callable[[str, Mapping], dict] = run_isolated,
    progress: Callable[[int, int, str], None] | None = None,
) -> Comparison:
    """Measure contenders alternately, one process per measurement, for ``rounds`` rounds.

    Round ``i`` runs the contenders rotated by ``i`` (A B, B A, A B, ...), so no contender always runs
    first after a pause, and linear drift hits all of them alike.

    Args:
        contenders: at least one :class:`Contender`, names unique.
        rounds: rounds to run (≥ 1; ≥ 3 for a meaningful noise estimate).
        runner: ``runner(fn, kwargs) -> result dict``; :func:`run_isolated` by default (tests inject fakes).
        progress: called as ``progress(done, total, name)`` after each measurement.

    Returns:
        A :class:`Comparison`; ``comparison.ratio("ours", "fp32")`` gives the paired ratio and its noise.

    Example:
        >>> c = compare_interleaved([Contender("a", "measure_onnx", {"path": "a.onnx"}),
        ...                          Contender("b", "measure_onnx", {"path": "b.onnx"})], rounds=5)  # doctest: +SKIP
        >>> print(c.ratio("a", "b"))  # doctest: +SKIP
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    names = [c.name for c in contenders]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"contender names must be unique and non-empty, got {names}")
    results: dict[str, list[dict]] = {n: [] for n in names}
    order: list[list[str]] = []
    total, done = rounds * len(contenders), 0
    for i in range(rounds):
        k = i % len(contenders)
        this_round = list(contenders[k:]) + list(contenders[:k])
        order.append([c.name for c in this_round])
        for c in this_round:
            result = runner(c.fn, dict(c.kwargs))
            median = result.get("latency", {}).get("median") if isinstance(result, dict) else None
            if median is None or not math.isfinite(median):
                raise ConfigError(f"measurement {c.fn!r} for {c.name!r} returned no latency.median; "
                                  "return LatencyStats fields under 'latency'")
            results[c.name].append(result)
            done += 1
            if progress is not None:
                progress(done, total, c.name)
    return Comparison(names=names, rounds=rounds, order=order, results=results)
