"""Per-layer latency of each quantization mode, measured in the target runtime (``--mode auto``'s cost table).

Why measure: the order static < dynamic < weight-only < float is a prior, and on x86 onnxruntime it is wrong for
transformer linears (a BERT-shaped encoder's dynamic int8 ran at 10.2 ms where static took 16.7 ms,
benchmarks/results/x86_64-intel-xeon-processor-2c/modes-latest.md). So for every candidate mode of a quantized
layer, a one-layer model at that layer's real input shapes (recorded on a calibration sample) is prepared,
calibrated and exported with the project's own exporters, then timed in onnxruntime (and LiteRT for TFLite,
where the exporter can write the mode): 1 thread, the candidates interleaved call by call (a busy machine slows
stretches of time, which then land on every candidate alike), the median of a few hundred calls.

The one-layer file holds the layer's own boundary (Q / DQ, or DynamicQuantizeLinear) as well as its kernel: in
the whole model a static layer between static neighbours shares that boundary, so static is charged a little
more than in the whole model. The ranking this table feeds compares modes *per layer*, where that bias is
small next to the differences being chosen between (×1.6 above).

Figures depend only on the op, its shapes, the mode, the runtime and the machine, so they are cached under that
key in memory and in ``$COMPRESS_CACHE_DIR`` (default ``~/.cache/compress``)``/layer-latency/``: a repeated run
measures nothing. Total time is bounded (``LatencyConfig.budget_s``); layers past the bound are listed in
``LatencyTable.skipped`` and the planner orders them by the prior.

Imports: this pass needs the exporters and the runtimes, which sit above ``passes``; they are imported inside
the functions that write and time a file, so importing ``compress.passes`` loads neither.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.errors import CompressError, ConfigError
from compress.quant.config import QuantConfig, QuantMode, parse_mode

TABLE_VERSION = 1
#: Runtime names of the table, per format the pipeline writes.
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
_MEMORY: dict[str, float] = {}  # cache key -> median ms, for this process
_FILE_NUMBERS = itertools.count()


@dataclass(frozen=True)
class LatencyConfig:
    """How :func:`measure_layer_latency` times the candidates.

    Args:
        runtimes: ``"onnxruntime"`` and / or ``"litert"``; the first orders the planner's ladder.
        activation_dtype: ONNX activation storage, ``"uint8"`` (x86) or ``"int8"`` (ARM), as the file will have.
        runs: timed calls per candidate (fewer when a layer is so slow that they would not fit its share of
            ``budget_s``; never fewer than ``min_runs``).
        min_runs: the fewest timed calls a median is taken over.
        budget_s: the most seconds the whole table may take; layers past it are skipped (and reported).
        cache: read and write the on-disk cache.

    Example:
        >>> LatencyConfig(runtimes=("litert",)).runtimes
        ('litert',)
    """

    runtimes: tuple[str, ...] = ("onnxruntime",)
    activation_dtype: str = "uint8"
    runs: int = 300
    min_runs: int = 31
    budget_s: float = 20.0
    cache: bool = True

    def __post_init__(self):
        unknown = [r for r in self.runtimes if r not in RUNTIME_OF_FORMAT.values()]
        if unknown or not self.runtimes:
            raise ConfigError(f"latency runtimes must be onnxruntime and / or litert, got {self.runtimes!r}")
        if self.activation_dtype not in ("uint8", "int8"):
            raise ConfigError(f"activation_dtype must be 'uint8' or 'int8', got {self.activation_dtype!r}")
        if self.runs < 1 or self.min_runs < 1 or not self.budget_s > 0:
            raise ConfigError("runs and min_runs must be ≥ 1 and budget_s > 0")


@dataclass
class LayerCase:
    """One quantized layer to time: its float module, a real input, and the modes to time it in."""

    unit: str
    layer: nn.Module
    inputs: tuple[torch.Tensor, ...]
    modes: tuple[QuantMode, ...]

    def shape_key(self) -> str:
        """What the latency depends on: op, its configuration (``extra_repr``), input shapes and dtypes."""
        ins = [[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in self.inputs]
        return json.dumps([type(self.layer).__name__, self.layer.extra_repr(), ins])


@dataclass
class LatencyTable:
    """Median latency per layer, runtime and mode, in milliseconds (``ms[unit][runtime][mode]``)."""

    runtimes: tuple[str, ...]
    ms: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # unit -> why it has no figures
    source: str = "measured"  # "measured", "injected" (given through the API) or "prior" (not measured)
    machine: str = ""
    seconds: float = 0.0
    timed: int = 0  # candidate files timed by this call
    cached: int = 0  # figures read from the cache
    note: str = ""

    @classmethod
    def from_ms(cls, table: Mapping[str, Mapping[str, float]], runtime: str = "onnxruntime") -> LatencyTable:
        """A table given as ``{unit: {mode: ms}}`` (tests, or figures measured elsewhere).

        Example:
            >>> t = LatencyTable.from_ms({"fc": {"static": 2.0, "dynamic": 1.0}})
            >>> t.cost("fc", QuantMode.DYNAMIC), t.source
            (1.0, 'injected')
        """
        ms = {u: {runtime: {parse_mode(m).value: float(v) for m, v in modes.items()}} for u, modes in table.items()}
        return cls((runtime,), ms, source="injected")

    @classmethod
    def prior(cls, note: str, runtimes: tuple[str, ...] = ("onnxruntime",)) -> LatencyTable:
        """No figures: the planner uses the latency prior; ``note`` says why."""
        return cls(runtimes, source="prior", note=note)

    def cost(self, unit: str, mode: QuantMode, runtime: str | None = None) -> float | None:
        """The median ms of ``unit`` in ``mode`` in ``runtime`` (default: the first), or None if not measured."""
        return self.ms.get(unit, {}).get(runtime or self.runtimes[0], {}).get(QuantMode(mode).value)

    def to_dict(self) -> dict:
        return {"source": self.source, "runtimes": list(self.runtimes), "machine": self.machine,
                "seconds": round(self.seconds, 2), "timed": self.timed, "cached": self.cached,
                "skipped": dict(self.skipped), "note": self.note}


def cache_file(machine: str) -> Path:
    """The on-disk cache of one machine's figures."""
    root = Path(os.environ.get("COMPRESS_CACHE_DIR") or Path.home() / ".cache" / "compress")
    return root / "layer-latency" / f"{machine}.json"


def _runtime_version(runtime: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version({"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}[runtime])
    except PackageNotFoundError:
        return "absent"


def _key(case: LayerCase, mode: QuantMode, runtime: str, config: LatencyConfig, machine: str) -> str:
    return json.dumps([TABLE_VERSION, case.shape_key(), mode.value, runtime, _runtime_version(runtime),
                       config.activation_dtype, machine])


class _OneLayer(nn.Module):
    """The layer alone, returning its first output (a recurrent layer also returns its state)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs):
        out = self.layer(*inputs)
        while isinstance(out, tuple | list):
            out = out[0]
        return out


def _write_file(case: LayerCase, mode: QuantMode, runtime: str, quant: QuantConfig, config: LatencyConfig,
                folder: Path) -> Path:
    """The one-layer model of ``case`` in ``mode``, exported for ``runtime`` by the project's exporters."""
    from compress.passes.calibrate import calibrate
    from compress.passes.convert import convert
    from compress.passes.prepare import prepare

    net = _OneLayer(case.layer).eval()
    if mode is not QuantMode.FLOAT:
        net = prepare(net, case.inputs, replace(quant, mode=mode, layer_modes={}))
        net = convert(calibrate(net, [(case.inputs,)], progress=False))
    path = folder / f"{next(_FILE_NUMBERS)}-{mode.value}.{'onnx' if runtime == 'onnxruntime' else 'tflite'}"
    if runtime == "onnxruntime":
        from compress.exporters.onnx import OnnxExportConfig, export_onnx

        export_onnx(net, case.inputs, path, OnnxExportConfig(activation_dtype=config.activation_dtype))
    else:
        from compress.exporters.tflite import TFLiteExportConfig, export_tflite

        export_tflite(net, case.inputs, path, TFLiteExportConfig())
    return path


def _runner(path: Path, runtime: str, inputs: tuple[np.ndarray, ...]):
    """A zero-argument call running the file once on ``inputs``, single-threaded."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs, strict=True)}
        return lambda: sess.run(None, feed)
    from compress.exporters.tflite.verify import load_interpreter, run_tflite

    interpreter = load_interpreter(path, 1)
    return lambda: run_tflite(interpreter, inputs)


def time_interleaved_median(runners: Sequence, runs: int, min_runs: int, seconds: float) -> list[float]:
    """Median ms of each runner over up to ``runs`` rounds, one call of each per round in rotating order.

    Fewer rounds (at least ``min_runs``) when ``runs`` rounds would exceed ``seconds``.

    Example:
        >>> [ms >= 0 for ms in time_interleaved_median([lambda: None, lambda: None], 5, 3, 1.0)]
        [True, True]
    """
    started = time.perf_counter()
    for run in runners:  # warm-up: first calls allocate, and onnxruntime picks kernels lazily
        for _ in range(3):
            run()
    per_round = (time.perf_counter() - started) / 3
    rounds = max(min_runs, min(runs, int(seconds / max(per_round, 1e-9))))
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        for k in range(len(runners)):
            i = (k + r) % len(runners)  # rotate: no candidate always runs right after another's cache traffic
            t = time.perf_counter()
            runners[i]()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e3 for ts in times]


def _load_disk(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return {k: float(v) for k, v in data.get("ms", {}).items()} if data.get("version") == TABLE_VERSION else {}
    except (OSError, ValueError, AttributeError):
        return {}  # absent, torn or foreign: measure again


def _save_disk(path: Path, figures: dict[str, float]) -> None:
    from compress.io.atomic import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"version": TABLE_VERSION, "ms": {**_load_disk(path), **figures}})
    except (OSError, CompressError):
        pass  # a read-only home: the figures are only not cached


def _machine() -> str:
    from compress.runtime.machine import machine_slug

    return machine_slug()


def measure_layer_latency(cases: Sequence[LayerCase], quant: QuantConfig | None = None,
                          config: LatencyConfig | None = None) -> LatencyTable:
    """Time every case in each of its modes in each runtime (or read the figures from the cache).

    Cases with the same op and shapes are timed once. A mode the runtime's exporter cannot write (e.g. dynamic
    in TFLite) has no figure in that runtime; a case that fails to build or time, or that the time budget did
    not reach, is listed in ``skipped`` with the reason.

    Args:
        cases: the layers, from :func:`record_cases` or built by hand.
        quant: the user's configuration (weight granularity); each case overrides its mode.
        config: runtimes, runs and the time bound.

    Returns:
        A :class:`LatencyTable`.

    Example:
        >>> case = LayerCase("fc", nn.Linear(16, 8), (torch.randn(1, 16),), (QuantMode.STATIC, QuantMode.FLOAT))
        >>> t = measure_layer_latency([case], config=LatencyConfig(runs=20, min_runs=5, cache=False))
        >>> sorted(t.ms["fc"]["onnxruntime"]), t.cost("fc", "float") > 0
        (['float', 'static'], True)
    """
    quant = quant or QuantConfig()
    config = config or LatencyConfig()
    started = time.perf_counter()
    machine = _machine()
    disk_path = cache_file(machine)
    disk = _load_disk(disk_path) if config.cache else {}
    table = LatencyTable(config.runtimes, machine=machine)
    groups: dict[str, list[LayerCase]] = {}
    for case in cases:
        groups.setdefault(case.shape_key(), []).append(case)
    new: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="compress-layer-latency-") as tmp:
        for n, members in enumerate(groups.values()):
            case = members[0]
            figures: dict[str, dict[str, float]] = {}
            try:
                for runtime in config.runtimes:
                    figures[runtime] = _measure_group(case, runtime, quant, config, machine, disk, new, table,
                                                      Path(tmp), started, len(groups) - n)
            except _OutOfTime:
                for c in members:
                    table.skipped[c.unit] = f"not measured: the {config.budget_s:g} s measuring budget was spent"
                continue
            except (CompressError, ImportError, RuntimeError, ValueError, TypeError) as error:
                why = str(error).splitlines()[0] if str(error) else type(error).__name__
                for c in members:
                    table.skipped[c.unit] = f"not measured: {why}"
                continue
            for c in members:
                table.ms[c.unit] = {rt: dict(v) for rt, v in figures.items() if v}
    if new and config.cache:
        _save_disk(disk_path, new)
    table.seconds = time.perf_counter() - started
    return table


class _OutOfTime(Exception):
    pass


def _measure_group(case: LayerCase, runtime: str, quant: QuantConfig, config: LatencyConfig, machine: str,
                   disk: dict, new: dict, table: LatencyTable, tmp: Path, started: float, left: int) -> dict:
    out: dict[str, float] = {}
    todo = []
    for mode in case.modes:
        key = _key(case, mode, runtime, config, machine)
        hit = _MEMORY.get(key, disk.get(key))
        if hit is not None:
            out[mode.value] = _MEMORY.setdefault(key, hit)
            table.cached += 1
        else:
            todo.append((mode, key))
    if not todo:
        return out
    remaining = config.budget_s - (time.perf_counter() - started)
    if remaining <= 0:
        raise _OutOfTime
    arrays = tuple(t.detach().cpu().numpy() for t in case.inputs)
    runners, keys = [], []
    for mode, key in todo:
        try:
            path = _write_file(case, mode, runtime, quant, config, tmp)
        except CompressError:
            if runtime == "onnxruntime":
                raise
            continue  # TFLite has no form of this mode (the exporter refuses it by name): no LiteRT figure
        runners.append(_runner(path, runtime, arrays))
        keys.append((mode, key))
    share = max(0.05, (config.budget_s - (time.perf_counter() - started)) / max(left, 1))
    for (mode, key), ms in zip(keys, time_interleaved_median(runners, config.runs, config.min_runs, share),
                               strict=True):
        out[mode.value] = _MEMORY[key] = new[key] = ms
        table.timed += 1
    return out


def record_cases(model: nn.Module, paths: Mapping[str, str], example: tuple[torch.Tensor, ...],
                 layers: Mapping[str, nn.Module], modes: Mapping[str, Sequence[QuantMode]]) -> list[LayerCase]:
    """One :class:`LayerCase` per unit: the inputs its layer receives when ``model`` runs ``example``.

    Args:
        model: the (prepared) model whose submodules at ``paths`` are called.
        paths: unit -> the module path of its (first) call in ``model``.
        example: one calibration sample (batch 1: the latency a deployed model sees per request).
        layers: unit -> its float module (what the one-layer model is built from).
        modes: unit -> the modes to time.
    """
    seen: dict[str, tuple] = {}
    handles = []
    for unit, path in paths.items():
        def hook(_module, args, unit=unit):
            if unit not in seen and all(isinstance(a, torch.Tensor) for a in args):
                seen[unit] = tuple(a.detach().clone() for a in args)

        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()
    return [LayerCase(unit, layers[unit], seen[unit], tuple(modes[unit])) for unit in paths if unit in seen]


# -- ordering the planner's ladders by the table --------------------------------------------------------

#: Modes in the order of accuracy (least first), which is also the latency prior used without measured figures.
LADDER = (QuantMode.STATIC, QuantMode.DYNAMIC, QuantMode.WEIGHT_ONLY, QuantMode.FLOAT)
#: A more accurate rung measured at most this much slower than a less accurate one replaces it: differences
#: that small are within the spread of repeated medians on a shared machine.
TIE = 0.05


def by_cost(options: Sequence[QuantMode], cost) -> list[QuantMode]:
    """``options`` (least accurate first) cheapest first, without those a more accurate option is no slower
    than (within :data:`TIE`); the prior order as given when any option has no figure.

    Example:
        >>> ms = {QuantMode.STATIC: 16.7, QuantMode.DYNAMIC: 10.2, QuantMode.WEIGHT_ONLY: 12.0}
        >>> [m.value for m in by_cost(list(ms), ms.get)]
        ['dynamic', 'weight-only']
    """
    figures = [cost(m) for m in options]
    if any(f is None for f in figures):
        return list(options)
    kept = [(f, m) for i, (f, m) in enumerate(zip(figures, options, strict=True))
            if not any(g <= f * (1 + TIE) for g in figures[i + 1:])]
    return [m for _, m in sorted(kept, key=lambda t: t[0])]


class ModeLadders:
    """Each quantized layer's modes, cheapest measured first, for the sensitivity planner.

    The table is measured on first use (a plan that moves no layer under a fixed mode never needs it), from
    ``net`` (a prepared model: ``units`` maps each decision unit to its layers' paths there) run on ``example``.
    ``given``: a table to use instead (a :class:`LatencyTable` or ``{unit: {mode: ms}}``).
    """

    def __init__(self, net: nn.Module, units: Mapping[str, Sequence[str]], example: tuple, quant: QuantConfig,
                 allowed: set[QuantMode], *, measure: bool = True, config: LatencyConfig | None = None,
                 given: LatencyTable | Mapping | None = None):
        from compress.layers.dynamic import supported_modes

        self.net, self.units, self.example, self.quant = net, dict(units), example, quant
        self.measure, self.config = measure, config or LatencyConfig()
        self.table: LatencyTable | None = LatencyTable.from_ms(given) if isinstance(given, Mapping) else given
        self.used = False  # whether any ladder was ordered by figures
        modules = dict(net.named_modules())
        self._layers = {u: modules[paths[0]] for u, paths in self.units.items()}
        self._candidates = {u: [m for m in LADDER[:-1] if m in set(supported_modes(type(layer))) & allowed]
                            for u, layer in self._layers.items()}
        self.allowed = allowed

    def candidates(self, unit: str) -> list[QuantMode]:
        """The quantized modes the unit's layer implements and the plan may use, least accurate first. For a
        TFLite file also one LiteRT's exporter wrote for it (dynamic is refused for some layers, e.g. LSTM);
        without a LiteRT figure for the layer, dynamic is left out."""
        modes = self._candidates.get(unit, [])
        if "litert" not in self.config.runtimes:
            return modes
        written = self.measured().ms.get(unit, {}).get("litert")
        if written is None:
            return [m for m in modes if m is not QuantMode.DYNAMIC]
        return [m for m in modes if m.value in written]

    def measured(self) -> LatencyTable:
        if self.table is None:
            self.table = self._measure()
        return self.table

    def _measure(self) -> LatencyTable:
        if not self.measure:
            return LatencyTable.prior("not measured (measure=False, --no-measure)", self.config.runtimes)
        try:
            layers = {u: layer.to_float().eval() for u, layer in self._layers.items()}
            modes = {u: (*self._candidates[u], QuantMode.FLOAT) for u in self.units}
            cases = record_cases(self.net, {u: p[0] for u, p in self.units.items()}, self.example, layers, modes)
            table = measure_layer_latency(cases, self.quant, self.config)
        except (CompressError, ImportError, RuntimeError) as error:  # a missing runtime, an export it refuses
            why = str(error).splitlines()[0] if str(error) else type(error).__name__
            return LatencyTable.prior(f"measuring failed ({why})", self.config.runtimes)
        for unit in set(self.units) - set(table.ms) - set(table.skipped):
            table.skipped[unit] = "not measured: its inputs are not plain tensors"
        return table

    def order(self, unit: str, options: list[QuantMode]) -> list[QuantMode]:
        """``options`` cheapest measured first (dominated ones left out), or as given without figures."""
        if len(options) < 2:
            return list(options)
        table = self.measured()
        ordered = by_cost(options, lambda m: table.cost(unit, m))
        self.used |= all(table.cost(unit, m) is not None for m in options)
        return ordered

    def ladder(self, unit: str, start: QuantMode) -> list[QuantMode]:
        """Rungs above ``start`` the layer can take, cheapest measured first; float last (it gives up the
        int8 file size, so it is the fallback for accuracy, never a latency choice)."""
        above = [m for m in self.candidates(unit) if LADDER.index(m) > LADDER.index(start)]
        return self.order(unit, above) + [QuantMode.FLOAT]

    def starts(self) -> list[tuple[QuantMode, dict[str, QuantMode]]]:
        """``--mode auto``'s starting points, (base mode, the layers off it): every layer on its cheapest mode;
        then the same without static, then without dynamic. Without figures: static, dynamic, weight-only."""
        out = []
        for k, tier in enumerate(LADDER[:-1]):
            if k < LADDER.index(self.quant.mode) or tier not in self.allowed:
                continue
            start = {}
            for unit in self.units:
                options = [m for m in self.candidates(unit) if LADDER.index(m) >= k]
                if options and self.quant.mode_for(unit) is self.quant.mode:  # not a user's --layer-mode
                    start[unit] = self.order(unit, options)[0]
            counts = {m: list(start.values()).count(m) for m in start.values()}
            # the base (the ops between layers follow it) is the mode most layers start in, the tier's on a tie
            base = max(counts, key=lambda m: (counts[m], m is tier)) if counts else tier
            start = {u: m for u, m in start.items() if m is not base}
            if (base, start) not in out:
                out.append((base, start))
        return out

    def summary(self) -> dict:
        """report.json ``sensitivity.latency``: how the ladders were ordered and what the table cost."""
        if self.table is None:
            return {"ladder": "prior", "source": "not measured: no layer had to choose a mode"}
        return {"ladder": "measured" if self.used and self.table.source != "prior" else "prior",
                **self.table.to_dict()}


def latency_cell(row: dict, runtime: str) -> str:
    """Measured ms of every mode in ladder order (static · dynamic · weight-only · float), the chosen one starred.

    Example:
        >>> latency_cell({"mode": "dynamic", "latency_ms": {"onnxruntime": {"static": 0.0241, "dynamic": 0.0167}}},
        ...              "onnxruntime")
        '0.0241 · *0.0167 · – · –'
    """
    ms = row.get("latency_ms", {}).get(runtime, {})
    if not ms:
        return "–"
    return " · ".join("–" if m.value not in ms else ("*" if m.value == row["mode"] else "") + f"{ms[m.value]:.3g}"
                      for m in LADDER)


LATENCY_HEADER = "ms: static · dynamic · weight-only · float"


def latency_note(latency: dict) -> str:
    if latency.get("ladder") == "measured":
        skipped = latency.get("skipped") or {}
        return (f"ladders ordered by latency measured in {', '.join(latency['runtimes'])} (1 thread, median; "
                f"{latency['timed']} files timed, {latency['cached']} figures cached, {latency['seconds']:.1f} s)"
                + (f"; {len(skipped)} layers by the prior: {next(iter(skipped.values()))}" if skipped else ""))
    why = latency.get("note") or latency.get("source", "not measured")
    return f"ladders ordered by the latency prior static < dynamic < weight-only < float ({why})"


__all__ = ["LADDER", "LatencyConfig", "LatencyTable", "LayerCase", "ModeLadders", "by_cost", "latency_cell",
           "latency_note", "measure_layer_latency", "record_cases", "time_interleaved_median"]
