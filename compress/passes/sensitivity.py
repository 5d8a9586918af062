"""Sensitivity analysis and mixed precision: which layers leave static int8 so the metric stays within budget.

:func:`plan_layer_modes` measures, in the torch simulation, how much of the task metric each quantized layer
costs, then moves the fewest layers up the precision ladder (static → dynamic → weight-only → float: each rung
is at least as accurate as the one before) until the metric of the whole model is within ``max_drop``
percentage points of fp32. The result is a ``layer_modes`` table for :class:`QuantConfig` and a per-layer report.

Which rung is cheapest is *measured* per layer (:mod:`compress.passes.layer_latency`: the layer alone at its real
shapes, in the target runtime), because the prior "each rung is slower" is wrong where it matters (onnxruntime
on x86 runs transformer linears faster dynamic than static). A layer's ladder keeps the rungs no more accurate
rung beats on measured time (within ``TIE``), cheapest first; float stays last, as the fallback that gives up
the int8 file size. ``--mode auto`` starts every layer on its cheapest rung. Without figures (``measure=False``,
a failed or skipped measurement) a layer's ladder is the prior, and the report says so.

How a layer's sensitivity is measured: both ways, in one model calibrated on float weights, with layers
switched in place (a quant layer swapped for its float version, activation quantizers for identities):

* ``drop_alone_pp``: the drop with only that layer (its weights and the activation grids around it) quantized;
* ``gain_pp``: what the metric recovers when that layer alone goes back to float in the fully quantized model.

The greedy search ranks by ``gain_pp``: it is the exact quantity the search acts on (its first step *is* "move
one layer to float" in the quantized model), and it includes how the layer's error meets the other layers'
(an error behind a coarse grid, or fed back through a recurrent state, costs more in the quantized model than
alone; an isolated drop also charges a layer for the activation grids around it, which float does not remove
when a static neighbour still reads them). ``drop_alone_pp`` breaks ties and is shown for the user. (On the
zoo's trained models at a 1 pp budget no layer had to leave static, so the two rankings could not be compared
there.) Each combination the greedy step builds is measured again (errors do not add up linearly), then
confirmed by preparing the model with those modes, as the exporter will see it.

Cost is bounded: at most ``max_samples`` evaluation samples, 2 in-place evaluations per layer, and at most
``max_exact`` full prepare + calibrate rounds.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import fx, nn

from compress.errors import ConfigError, ExportError
from compress.passes import graph as g
from compress.passes.calibrate import _progress, calibrate, iter_inputs
from compress.passes.layer_latency import (
    LADDER,
    LATENCY_HEADER,
    RUNTIME_OF_FORMAT,
    LatencyConfig,
    LatencyTable,
    ModeLadders,
    latency_cell,
    latency_note,
)
from compress.passes.metric import BUILTIN, load_metric_callable, resolve_metric
from compress.passes.prepare import _set_module, prepare
from compress.quant.config import QuantConfig, QuantMode, parse_mode
from compress.quant.fake import Quantizer


@dataclass(frozen=True)
class SensitivityConfig:
    """Options of :func:`plan_layer_modes`.

    Args:
        max_drop: budget, in percentage points of the metric (accuracy 0.95 → 0.945 is 0.5).
        metric: ``None`` (accuracy with labels, else top-1 agreement or cosine with fp32), ``"accuracy"``,
            ``"agreement"``, ``"cosine"`` or ``"MODULE:CALLABLE"`` (see :mod:`compress.passes.metric`).
        auto: ``--mode auto``: every layer starts on its fastest measured mode; when no plan from there holds
            the budget, static is left out, then dynamic. Without it every layer starts in ``quant.mode``.
        max_samples: evaluation samples per measurement.
        modes: the modes the plan may use (``sensitivity_config`` leaves out dynamic for TFLite, which has no
            dynamic form here).
        max_exact: full prepare + calibrate confirmations at most (each costs about one ``compress quantize``
            calibration).
        measure: time each layer's modes in the target runtime (``latency``); False: the latency prior.
        latency: runtimes and bounds of that measurement (:class:`~compress.passes.layer_latency.LatencyConfig`).

    Example:
        >>> SensitivityConfig(max_drop=0.5).max_drop
        0.5
    """

    max_drop: float = 1.0
    metric: str | None = None
    auto: bool = False
    max_samples: int = 512
    max_exact: int = 8
    modes: tuple[str, ...] = tuple(m.value for m in LADDER)
    measure: bool = True
    latency: LatencyConfig = field(default_factory=LatencyConfig)

    def __post_init__(self):
        if not isinstance(self.max_drop, int | float) or not np.isfinite(self.max_drop) or self.max_drop < 0:
            raise ConfigError(f"max drop must be a number of percentage points ≥ 0 (e.g. 0.5), got {self.max_drop!r}")
        object.__setattr__(self, "modes", tuple(parse_mode(m).value for m in self.modes))
        if self.max_samples < 1 or self.max_exact < 1:
            raise ConfigError("max_samples and max_exact must be ≥ 1")


@dataclass
class LayerSensitivity:
    """One row of the table: a quantized layer, what it costs and the mode chosen for it."""

    layer: str
    op: str
    drop_alone_pp: float | None  # fp32 metric − metric with only this layer quantized, in points
    gain_pp: float | None  # metric recovered when only this layer goes back to float, in points
    mode: str
    reason: str
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # runtime -> mode -> measured median

    def to_dict(self) -> dict:
        first = next(iter(self.latency_ms.values()), {})
        return {"layer": self.layer, "op": self.op, "drop_alone_pp": _rounded(self.drop_alone_pp),
                "gain_pp": _rounded(self.gain_pp), "mode": self.mode, "reason": self.reason,
                "mode_ms": _ms(first.get(self.mode)),
                "latency_ms": {rt: {m: _ms(v) for m, v in ms.items()} for rt, ms in self.latency_ms.items()}}


@dataclass
class SensitivityResult:
    """What :func:`plan_layer_modes` measured and chose."""

    metric: str
    fp32: float  # the metric of the float model
    quantized: float  # every layer in the base mode
    planned: float  # with ``layer_modes`` (confirmed by a full prepare + calibrate)
    max_drop: float
    samples: int
    mode: str  # the base mode: every layer not in ``layer_modes`` runs in it
    rows: list[LayerSensitivity] = field(default_factory=list)
    layer_modes: dict[str, str] = field(default_factory=dict)
    note: str = ""
    measurements: int = 0
    seconds: float = 0.0
    latency: dict = field(default_factory=dict)  # how the ladders were ordered (LatencyTable.to_dict + "ladder")

    @property
    def within_budget(self) -> bool:
        return _points(self.fp32 - self.planned) <= self.max_drop

    def warning(self) -> str:
        """The line to show when the plan misses the budget, with what to try."""
        drop = _points(self.fp32 - self.planned)
        why = f" ({self.note})" if self.note else ""
        return (f"the {self.metric} is {drop:.2f} pp below fp32 on {self.samples} samples, over the --max-drop "
                f"budget of {self.max_drop:g} pp{why}; try --mode auto, --mode dynamic or --observer percentile")

    def to_dict(self) -> dict:
        return {"metric": self.metric, "fp32": self.fp32, "quantized": self.quantized, "planned": self.planned,
                "drop_pp": round(_points(self.fp32 - self.planned), 4), "max_drop_pp": self.max_drop,
                "within_budget": self.within_budget, "samples": self.samples, "mode": self.mode,
                "layer_modes": dict(self.layer_modes), "note": self.note, "measurements": self.measurements,
                "seconds": round(self.seconds, 2), "latency": dict(self.latency),
                "layers": [r.to_dict() for r in self.rows]}


def _points(fraction: float) -> float:
    return 100.0 * fraction


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 6)  # ns resolution: tiny layers run in a few µs


def _outputs(model: nn.Module, data, batch_size: int) -> np.ndarray:
    chunks = []
    with torch.no_grad():
        for inputs in iter_inputs(data, batch_size):
            out = model(*inputs)
            while isinstance(out, tuple | list):
                out = out[0]
            chunks.append(out.detach().float().cpu().numpy())
    return np.concatenate(chunks)


class _Switchboard:
    """Switch layers of one prepared model to float, or every quantizer but one layer's off, in place."""

    def __init__(self, prepared: fx.GraphModule):
        self.gm = prepared
        modules = dict(prepared.named_modules())
        self.units = _units(prepared, modules)  # user path -> the prepared paths of its calls
        self._float = {p: modules[p].to_float().eval() for paths in self.units.values() for p in paths}
        self._quant = {p: modules[p] for p in self._float}
        self._acts = [n.target for n in prepared.graph.nodes if g.is_quantizer(n, modules)]
        self._edges = {u: _edge_quantizers(prepared, modules, paths) for u, paths in self.units.items()}
        self._weight_quants = [f"{p}.{name}" for p in self._quant for name, q in modules[p].named_modules()
                               if isinstance(q, Quantizer) and q.from_tensor]

    def state(self, float_units=(), only: str | None = None):
        """Units in ``float_units`` run float; with ``only``, every other unit and activation grid is off too."""
        paths = [p for u in (set(self.units) - {only} if only else float_units) for p in self.units[u]]
        swaps = {p: self._float[p] for p in paths}
        if only is not None:
            swaps |= {a: nn.Identity() for a in self._acts if a not in self._edges[only]}
        return _swapped(self.gm, swaps)

    def float_weights(self):
        """Weights unquantized (activation quantizers untouched): calibrating so gives every activation the
        range it has in the float model, whichever layers later go float; with the weights quantized, a layer
        that int8 destroys would shrink every range after it to what its broken output spans."""
        return _swapped(self.gm, {w: nn.Identity() for w in self._weight_quants})


@contextmanager
def _swapped(gm: nn.Module, swaps: dict[str, nn.Module]):
    originals = {path: gm.get_submodule(path) for path in swaps}
    try:
        for path, module in swaps.items():
            _set_module(gm, path, module)
        yield
    finally:
        for path, module in originals.items():
            _set_module(gm, path, module)


def _units(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> dict[str, list[str]]:
    """The user's module path of each quantized layer → the prepared layers of its calls.

    ``prepare`` gives every extra call of a shared module its own layer (``decoder_gru_call2``) holding the
    first call's parameter objects; those copies are one decision, under the first call's path.
    """
    units: dict[str, list[str]] = {}
    owner_of: dict[int, str] = {}
    for path in gm.compress_info.quantized_layers:
        if path not in modules:
            continue
        ids = [id(p) for p in modules[path].parameters()]
        owner = next((owner_of[i] for i in ids if i in owner_of), path)
        units.setdefault(owner, []).append(path)
        for i in ids:
            owner_of.setdefault(i, owner)
    return units


def _edge_quantizers(gm: fx.GraphModule, modules: dict[str, nn.Module], paths: list[str]) -> set[str]:
    """The activation quantizers on the inputs and outputs of the layers at ``paths`` (through reshapes,
    clamps and tuple indexing, which keep or reuse a grid)."""
    edges: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in paths:
            continue
        for arg in node.args:
            while isinstance(arg, fx.Node) and not g.is_quantizer(arg, modules) and g.is_preserving(arg, modules) \
                    and arg.args and isinstance(arg.args[0], fx.Node):
                arg = arg.args[0]
            if isinstance(arg, fx.Node) and g.is_quantizer(arg, modules):
                edges.add(arg.target)
        pending = list(node.users)
        while pending:
            user = pending.pop()
            if g.is_quantizer(user, modules):
                edges.add(user.target)
            elif g.is_preserving(user, modules) or g.is_clamp(user, modules) or user.target is operator.getitem:
                pending.extend(user.users)
    return edges


def plan_layer_modes(model: nn.Module, calib, evaluation, quant: QuantConfig | None = None,
                     config: SensitivityConfig | None = None, *, batch_size: int = 32,
                     max_calib_batches: int | None = None, table: bool = True,
                     progress: bool = True, latency: LatencyTable | Mapping | None = None) -> SensitivityResult:
    """Measure each quantized layer's sensitivity and choose per-layer modes that keep ``max_drop``.

    Args:
        model: the float model.
        calib: calibration :class:`compress.io.Dataset` (as :func:`compress.pipeline.quantize_model` uses it).
        evaluation: the Dataset the metric is measured on (labels used by ``accuracy`` and custom metrics).
        quant: the base configuration (its ``mode`` is what layers start in; its ``layer_modes`` are kept).
        config: budget, metric, ``auto`` and cost bounds. With ``auto`` every layer starts on its fastest
            measured mode; when no plan from there holds the budget, static is left out, then dynamic.
        batch_size, max_calib_batches: as in calibration.
        table: measure every layer even when the whole model is within budget (``inspect --sensitivity``);
            otherwise such a model costs one evaluation and its rows carry no figures.
        progress: a progress bar over the measurements.
        latency: per-layer latency figures to order the ladders with instead of measuring them: a
            :class:`~compress.passes.layer_latency.LatencyTable` or ``{unit: {mode: ms}}``.

    Returns:
        A :class:`SensitivityResult`; ``mode`` is the base mode and ``layer_modes`` holds only the layers moved
        off it. When no plan the cost bounds allow holds the budget, ``within_budget`` is False and the plan is
        the closest one found (the caller decides what to do with it).

    Example:
        >>> from compress.io import Dataset
        >>> from compress.models import DemoCNN
        >>> data = Dataset(np.random.rand(32, 1, 8, 8).astype("float32"), None)
        >>> r = plan_layer_modes(DemoCNN(), data, data, config=SensitivityConfig(max_drop=100), progress=False)
        >>> r.layer_modes, r.within_budget
        ({}, True)
    """
    t_start = time.perf_counter()
    quant = quant or QuantConfig()
    config = config or SensitivityConfig()
    search = _Search(model.cpu().eval(), calib, evaluation, config, batch_size, max_calib_batches, progress)
    net = prepare(search.model, calib.example(1), quant)  # the units, their classes and real input shapes
    units = _units(net, dict(net.named_modules())) if isinstance(net, fx.GraphModule) else {}
    costs = search.ladders = ModeLadders(net, units, calib.example(1), quant, search.allowed,
                                         measure=config.measure, config=config.latency, given=latency)
    starts = costs.starts() if config.auto else [(quant.mode, {})]
    best = None
    for base, start in starts:
        result = search.plan(replace(quant, mode=base, layer_modes={**quant.layer_modes, **start}), table, start)
        if best is None or result.planned > best.planned:
            best = result
        if result.within_budget:
            best = result
            break
    best.measurements, best.seconds = search.evaluations, time.perf_counter() - t_start
    best.latency = costs.summary()
    figures = costs.table.ms if costs.table is not None else {}
    for row in best.rows:
        row.latency_ms = figures.get(row.layer, {})
    return best


class _Search:
    """The measurements of one :func:`plan_layer_modes` call (the fp32 reference is computed once)."""

    def __init__(self, model, calib, evaluation, config: SensitivityConfig, batch_size, max_calib_batches,
                 progress):
        self.model, self.calib, self.config = model, calib, config
        self.batch_size, self.max_calib_batches, self.progress = batch_size, max_calib_batches, progress
        self.subset = evaluation.take(min(config.max_samples, len(evaluation)))
        self.reference = _outputs(model, self.subset, batch_size)
        self.metric = resolve_metric(config.metric, self.subset, self.reference)
        self.fp32 = self.metric.score(self.reference, self.reference, self.subset)
        self.evaluations = 0
        self.exact = 0
        self.ladders: ModeLadders | None = None
        self.allowed = {parse_mode(m) for m in config.modes}

    def score(self, net: nn.Module) -> float:
        self.evaluations += 1
        return self.metric.score(_outputs(net, self.subset, self.batch_size), self.reference, self.subset)

    def within(self, value: float) -> bool:
        return _points(self.fp32 - value) <= self.config.max_drop + 1e-9

    def build(self, quant: QuantConfig, layer_modes: dict[str, QuantMode]) -> fx.GraphModule:
        net = prepare(self.model, self.calib.example(1), replace(quant, layer_modes={**quant.layer_modes,
                                                                                     **layer_modes}))
        return calibrate(net, self.calib, batch_size=self.batch_size, max_batches=self.max_calib_batches,
                         progress=False)

    def confirm(self, quant: QuantConfig, modes: dict[str, QuantMode]) -> float:
        self.exact += 1
        return self.score(self.build(quant, modes))

    def plan(self, quant: QuantConfig, table: bool, start: dict[str, QuantMode]) -> SensitivityResult:
        """The plan from ``quant`` (its ``layer_modes`` include ``start``, the layers auto put off the base)."""
        budget = self.config.max_drop
        base = quant.mode.value
        exact_model = self.build(quant, {})
        if not isinstance(exact_model, fx.GraphModule):
            raise ExportError(f"{type(self.model).__name__} cannot be captured as a graph, so its layers cannot be "
                              "measured one by one; run `compress inspect MODEL --sample DATA` for the reason")
        quantized = self.score(exact_model)
        exact_units = _units(exact_model, dict(exact_model.named_modules()))

        def result(planned, rows, modes, note=""):
            return SensitivityResult(self.metric.name, self.fp32, quantized, planned, budget, len(self.subset),
                                     base, rows, {u: m.value for u, m in {**start, **modes}.items()}, note=note)

        def op(unit):
            return _op_name(self.model, unit, exact_model, exact_units[unit][0])

        def runs_in(unit):  # what prepare built (an embedding asked to be dynamic is weight-only: no activation)
            return exact_model.compress_info.layer_modes.get(unit, quant.mode_for(unit).value)

        if self.within(quantized) and not table:
            rows = [LayerSensitivity(u, op(u), None, None, runs_in(u), "not measured: the whole model is within budget") for u in exact_units]
            return result(quantized, rows, {})
        # The screening copy: calibrated on float weights, so switching a layer in place matches what a
        # prepare with that layer float would calibrate (up to the edge grids it drops).
        prepared = prepare(self.model, self.calib.example(1), quant)
        board = _Switchboard(prepared)
        units = board.units
        with board.float_weights():
            calibrate(prepared, self.calib, batch_size=self.batch_size, max_batches=self.max_calib_batches,
                      progress=False)
        with board.state(float_units=list(units)):
            ceiling = self.score(prepared)  # every layer float: the most layer modes can recover
        if not self.within(ceiling) and self.exact < self.config.max_exact:
            ceiling = self.confirm(quant, {u: QuantMode.FLOAT for u in units})  # the edge grids float drops
        hopeless = not self.within(ceiling)
        note = (f"with every layer in float the metric is still {_points(self.fp32 - ceiling):.2f} pp below fp32 "
                f"in {base} mode: the activation grids between layers cost it, no layer choice recovers it"
                if hopeless else "")
        if hopeless and not table:
            rows = [LayerSensitivity(u, op(u), None, None, runs_in(u), "not measured: " + note)
                    for u in units]
            return result(quantized, rows, {}, note)
        rows = self._measure(board, prepared, units, quantized, runs_in, op)
        order = sorted(units, key=lambda u: (-rows[u].gain_pp, -rows[u].drop_alone_pp))
        if hopeless or self.within(quantized):
            for row in rows.values():
                row.reason = "no layer choice recovers the drop" if hopeless else \
                    f"not needed: the whole model is within {budget:g} pp"
            return result(quantized, [rows[u] for u in order], {}, note)
        chosen = self._greedy(board, prepared, order, quantized)
        modes = {u: QuantMode.FLOAT for u in chosen}
        planned = self.confirm(quant, modes) if chosen else quantized
        rest = [u for u in order if u not in chosen]
        while not self.within(planned) and rest and self.exact < self.config.max_exact:
            unit = rest.pop(0)  # the file's simulation disagreed with the in-place estimate: one more layer
            chosen.append(unit)
            modes[unit] = QuantMode.FLOAT
            planned = self.confirm(quant, modes)
        for unit in chosen:  # a cheaper rung than float when it holds the budget
            for rung in self.ladders.ladder(unit, quant.mode_for(unit))[:-1]:
                if self.exact >= self.config.max_exact:
                    break
                value = self.confirm(quant, {**modes, unit: rung})
                if self.within(value):
                    modes[unit], planned = rung, value
                    break
        met = self.within(planned)
        for unit in rest if met else ():
            rows[unit].reason = f"not needed for a drop ≤ {budget:g} pp"
        for unit in chosen:
            row = rows[unit]
            row.mode = modes[unit].value
            row.reason = (f"recovers {row.gain_pp:.2f} pp; needed for a drop ≤ {budget:g} pp" if met else
                          f"recovers {row.gain_pp:.2f} pp; the budget {budget:g} pp is not reached")
        return result(planned, [rows[u] for u in order], modes, note)

    def _measure(self, board, prepared, units, quantized, runs_in, op) -> dict[str, LayerSensitivity]:
        bar, task = _progress(2 * len(units), "sensitivity", self.progress)
        rows = {}
        with bar:
            for unit in units:
                with board.state(only=unit):
                    alone = self.score(prepared)
                bar.advance(task)
                with board.state(float_units=[unit]):
                    reverted = self.score(prepared)
                bar.advance(task)
                rows[unit] = LayerSensitivity(unit, op(unit), _points(self.fp32 - alone),
                                              _points(reverted - quantized), runs_in(unit),
                                              "not tried: the cost bound (max_exact) was reached")
        return rows

    def _greedy(self, board, prepared, order, quantized) -> list[str]:
        chosen: list[str] = []
        current = quantized
        for unit in order:  # the most sensitive layer to float until the combination is within budget
            if self.within(current):
                break
            chosen.append(unit)
            with board.state(float_units=chosen):
                current = self.score(prepared)
        for unit in list(reversed(chosen[:-1])):  # fewest: drop a layer the later choices made unnecessary
            trial = [u for u in chosen if u != unit]
            with board.state(float_units=trial):
                value = self.score(prepared)
            if self.within(value):
                chosen = trial
        return chosen


def _op_name(model: nn.Module, unit: str, prepared: fx.GraphModule, path: str) -> str:
    try:
        return type(model.get_submodule(unit)).__name__
    except AttributeError:
        return type(prepared.get_submodule(path)).__name__


def sensitivity_config(max_drop: float | None, metric: str | None, *, auto: bool = False,
                       formats: tuple[str, ...] = (), target: str = "x86", measure: bool = True,
                       **kwargs) -> SensitivityConfig | None:
    """The :class:`SensitivityConfig` the CLI's ``--max-drop`` / ``--metric`` / ``--mode auto`` ask for, or None.

    ``--mode auto`` without ``--max-drop`` keeps 1 point. A custom metric is imported now, so a bad spec fails
    before any model is loaded. With ``"tflite"`` in ``formats`` a layer is dynamic only where LiteRT's exporter
    wrote (and timed) its dynamic form; without measuring, the plan then never uses dynamic.
    Layers are timed in the runtimes of ``formats`` (the first orders the ladders), with ``target``'s ONNX
    activation type; ``measure=False`` (``--no-measure``) orders them by the prior instead.

    Example:
        >>> sensitivity_config(None, None) is None, sensitivity_config(None, None, auto=True).max_drop
        (True, 1.0)
    """
    if max_drop is None and not auto:
        return None
    if metric is not None and metric not in BUILTIN:
        load_metric_callable(metric)
    if "tflite" in formats and not measure:
        kwargs.setdefault("modes", tuple(m.value for m in LADDER if m is not QuantMode.DYNAMIC))
    runtimes = tuple(RUNTIME_OF_FORMAT[f] for f in formats) or ("onnxruntime",)
    kwargs.setdefault("latency", LatencyConfig(runtimes=runtimes, activation_dtype="int8" if target == "arm"
                                               else "uint8"))
    return SensitivityConfig(max_drop=1.0 if max_drop is None else max_drop, metric=metric, auto=auto,
                             measure=measure, **kwargs)


def render_sensitivity(section: dict):
    """A rich Table of report.json's ``sensitivity`` section (``compress quantize`` / ``inspect --sensitivity``)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"sensitivity ({section['metric']}, {section['samples']} samples; budget "
                        f"{section['max_drop_pp']:g} pp)", title_justify="left")
    latency = section.get("latency", {})
    runtime = (latency.get("runtimes") or ["onnxruntime"])[0]
    for col in ("layer", "op", "drop alone", "gain as float", "mode", f"{LATENCY_HEADER} ({runtime})", "reason"):
        table.add_column(col, justify="right" if col in ("drop alone", "gain as float") else "left")
    for row in section["layers"]:
        figures = ["–" if row[k] is None else f"{row[k]:.2f} pp" for k in ("drop_alone_pp", "gain_pp")]
        mode = row["mode"] if row["mode"] == section["mode"] else f"[yellow]{row['mode']}[/]"
        table.add_row(row["layer"], row["op"], *figures, mode, latency_cell(row, runtime), row["reason"])
    moved = ", ".join(f"{k}={v}" for k, v in section["layer_modes"].items()) or "none"
    notes = Text(f"{section['metric']}: fp32 {section['fp32']:.4f}, all {section['mode']} {section['quantized']:.4f}, "
                 f"planned {section['planned']:.4f} (drop {section['drop_pp']:.2f} pp, "
                 f"{'within' if section['within_budget'] else 'OVER'} budget) · base mode {section['mode']} · "
                 f"moved: {moved} · drop alone: only that layer quantized; gain as float: what the metric "
                 f"recovers with only that layer in float · {section['measurements']} evaluations, "
                 f"{section['seconds']:.1f} s" + (f" · {section['note']}" if section["note"] else "")
                 + f" · {latency_note(latency)}", style="dim")
    return Group(table, notes)

