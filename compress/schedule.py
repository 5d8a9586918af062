"""One schedule from a large model to a small int8 one: prune → distill → QAT with the teacher → export.

:func:`run_schedule` runs the stages in this order, each switched on by its part of :class:`ScheduleConfig`:

1. **prune** (``config.prune``): structured channel removal or masks on the student (:mod:`compress.passes.prune`),
   then BatchNorm statistics re-estimated on the training inputs (pruning changed every BN's input, so the
   stored means and variances describe a network that no longer exists);
2. **distill** (``config.distill``): the (pruned) student fine-tuned against the frozen teacher
   (:func:`compress.distill.distill`), with the unlabelled ``transfer`` data labelled by the teacher;
   ``config.baseline`` trains a copy of the same student for the same number of optimizer steps with no
   teacher (:func:`compress.distill.train_baseline`), so the gain is measured, not assumed;
3. **QAT** (``config.qat``): the student is prepared for int8 (fake quantization in the loop), calibrated,
   and trained again with the teacher still distilling; pruned weights stay zero (masks locked) and
   BatchNorm statistics are frozen for the last epoch, so the network that is exported is the one trained;
4. **convert → export → verify** (``config.export``): fp32 files of the student (and int8 ones after QAT), each
   run in its runtime against the torch model; sizes, accuracy and onnxruntime latency of teacher and student.

The report lists the metric after every stage. The CLI (``compress distill``) is a thin layer over this.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.distill import DistillConfig, distill, train_baseline
from compress.errors import ConfigError, DataError, VerificationError
from compress.io.atomic import write_json_atomic
from compress.io.data import Dataset
from compress.passes import calibrate, convert, prepare
from compress.passes.prune import PruneConfig, count_nonzero, count_params, prune
from compress.passes.prune import accuracy as top1_accuracy
from compress.pipeline import _BACKENDS, Format, QuantizeOptions, _batches, _predict, quality_warnings

__all__ = ["ScheduleConfig", "ScheduleResult", "lock_zero_weights", "reestimate_bn", "run_schedule"]

REPORT_VERSION = 1
BN_BATCHES = 32  # batches of training inputs for the BN re-estimate: ~1000 samples at batch 32 settle the means
CALIB_SAMPLES = 256  # when no calibration set is given, the first training samples calibrate the int8 ranges
LATENCY_RUNS = 50


@dataclass(frozen=True)
class ScheduleConfig:
    """Which stages :func:`run_schedule` runs, and their options (``None`` switches a stage off).

    Args:
        prune: prune the student first (structured ``channels=`` or masks ``sparsity=`` / ``nm=``).
        distill: distil the (pruned) student from the teacher; ``None`` skips the float training stage.
        qat: quantization-aware training, distilled from the teacher too (``epochs`` / ``lr`` of that stage;
            ~1/10 of the float rate works); ``None``: no int8 model.
        export: formats and int8 options of the exported files (``formats``, ``target``, ``observer``,
            ``per_tensor``, ``batch_size``); ``None``: nothing is exported or verified.
        baseline: also train a copy of the student with the distill stage's budget and no teacher.
        bn_batches: batches of training inputs that re-estimate BatchNorm statistics after pruning.

    Example:
        >>> cfg = ScheduleConfig(prune=PruneConfig(channels=0.5), qat=DistillConfig(epochs=1, lr=1e-4))
        >>> [s for s in ("prune", "distill", "qat", "export") if getattr(cfg, s) is not None]
        ['prune', 'distill', 'qat', 'export']
    """

    prune: PruneConfig | None = None
    distill: DistillConfig | None = field(default_factory=DistillConfig)
    qat: DistillConfig | None = None
    export: QuantizeOptions | None = field(default_factory=QuantizeOptions)
    baseline: bool = False
    bn_batches: int = BN_BATCHES

    def __post_init__(self):
        if self.export is not None and self.export.qat:
            raise ConfigError("the schedule's QAT stage is ScheduleConfig(qat=DistillConfig(...)); leave "
                              "QuantizeOptions(qat=...) False")
        if self.baseline and self.distill is None:
            raise ConfigError("baseline compares against the distill stage; give distill=DistillConfig(...) or "
                              "drop baseline")
        if self.bn_batches < 1:
            raise ConfigError(f"bn_batches must be ≥ 1, got {self.bn_batches}")


@dataclass
class ScheduleResult:
    """What :func:`run_schedule` returns.

    Attributes:
        student: the float student after the last float stage (pruned and distilled), on the CPU, eval mode.
        int8: the converted int8 model after QAT (``None`` without the QAT stage).
        report: the JSON-ready report (also ``out_dir/report.json``).
    """

    student: nn.Module
    int8: nn.Module | None
    report: dict


def reestimate_bn(model: nn.Module, data: list[Dataset], *, batches: int = BN_BATCHES, batch_size: int = 32) -> int:
    """Recompute every BatchNorm's running mean and variance from forward passes over ``data``'s inputs.

    The statistics are reset and accumulated as a plain average over the batches (``momentum=None``), with no
    gradient and no weight change; returns how many BatchNorm layers were re-estimated (0: nothing to do).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> data = Dataset(np.full((64, 1, 5, 5), 2.0, np.float32))
        >>> reestimate_bn(net, [data]), round(float(net[1].running_var.max()), 4)  # constant input: var 0
        (1, 0.0)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same, whatever the count
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for dataset in data:
                for xb, _ in dataset.batches(batch_size, shuffle=True, seed=seen):
                    if seen >= batches:
                        break
                    model(*(xb if isinstance(xb, tuple) else (xb,)))
                    seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise DataError("no training inputs to re-estimate BatchNorm statistics after pruning; pass --train DATA")
    return len(norms)


def lock_zero_weights(model: nn.Module) -> list:
    """Keep every weight that is exactly zero at zero while ``model`` trains (pruned entries stay pruned).

    A gradient hook zeroes the gradient of those entries, so SGD, Adam and AdamW (whose decay of a zero is
    zero) never move them. Returns the hook handles (``handle.remove()`` unlocks).

    Example:
        >>> lin = nn.Linear(3, 1)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[0.0, 1.0, 0.0]]))
        >>> handles = lock_zero_weights(lin)
        >>> opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
        >>> lin(torch.ones(4, 3)).sum().backward(); opt.step()
        >>> lin.weight[0, 0].item(), lin.weight[0, 2].item()
        (0.0, 0.0)
    """
    handles = []
    for name, p in model.named_parameters():
        if p.dim() < 2 or not name.endswith("weight"):
            continue  # biases and norm scales are never pruned
        keep = (p.detach() != 0).to(p.dtype)
        if bool(keep.all()):
            continue
        handles.append(p.register_hook(lambda g, keep=keep: g * keep.to(g.device)))
    return handles


def _for_stage(config, stage: str):
    """The stage's own checkpoint folder under ``checkpoint_dir``: distill, baseline and QAT never share one."""
    if config is None or getattr(config, "checkpoint_dir", None) is None:
        return config
    return replace(config, checkpoint_dir=str(Path(config.checkpoint_dir) / stage))


def _metric(model: nn.Module, data: Dataset | None) -> float | None:
    return None if data is None else top1_accuracy(model, data)


def _stage(report: dict, name: str, model: nn.Module, eval_data, started: float, **extra) -> None:
    entry = {"stage": name, "metric": _metric(model, eval_data), "params": count_params(model),
             "nonzero_params": count_nonzero(model), "seconds": round(time.perf_counter() - started, 3)}
    report["stages"].append({**entry, **extra})


def run_schedule(teacher: nn.Module, student: nn.Module, train: Dataset, out_dir: str | Path | None = None,
                 config: ScheduleConfig | None = None, *, transfer: Dataset | None = None,
                 eval_data: Dataset | None = None, calib: Dataset | None = None,
                 progress: bool = True) -> ScheduleResult:
    """Prune, distil, quantize-aware train (teacher still distilling), convert, export and verify ``student``.

    Args:
        teacher: the trained large model (left untouched; frozen and in eval mode while it teaches).
        student: the small model to train (its initial weights are used; it is not modified).
        train: labelled training data.
        out_dir: where ``student.pt2``, ``student_state_dict.pt``, ``plan.json`` (pruned), the exported files
            ``student_fp32.onnx`` / ``student_int8.onnx`` (``.tflite`` too) and ``report.json`` go;
            ``None``: nothing is written and the export stage is skipped.
        config: the stages; default: distil only, export fp32 ONNX.
        transfer: unlabelled inputs the teacher labels (distill and QAT stages).
        eval_data: labelled held-out data: the metric after every stage (``None`` for all without it).
        calib: inputs that calibrate the int8 ranges before QAT (default: the first 256 training samples).
        progress: progress bars.

    Returns:
        :class:`ScheduleResult`. ``report["stages"]`` holds ``{"stage", "metric", "params", "seconds"}`` per
        stage; ``report["teacher"]``, ``report["baseline"]`` (with ``config.baseline``), ``report["formats"]``
        and ``report["latency"]`` the rest.

    Example:
        >>> from compress.models import DemoCNN
        >>> rng = np.random.default_rng(0)
        >>> data = Dataset(rng.random((64, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 64))
        >>> cfg = ScheduleConfig(prune=PruneConfig(channels=0.5), distill=DistillConfig(epochs=1), export=None)
        >>> result = run_schedule(DemoCNN(width=8), DemoCNN(width=4), data, None, cfg, eval_data=data,
        ...                       progress=False)
        >>> [s["stage"] for s in result.report["stages"]]
        ['initial', 'prune', 'bn_reestimate', 'distill']
    """
    config = config or ScheduleConfig()
    if len(train) == 0:
        raise DataError("the training set is empty; pass labelled samples (an .npz with x and y)")
    if train.y is None:
        raise DataError("distillation needs labelled --train data (x and y); unlabelled inputs go to --transfer")
    teacher = copy.deepcopy(teacher).cpu().eval()
    student = copy.deepcopy(student).cpu().eval()
    example = train.example(min(2, len(train)))  # a batch of 2 keeps the batch dimension dynamic in capture
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "version": REPORT_VERSION,
        "teacher": {"class": type(teacher).__name__, "params": count_params(teacher),
                    "metric": _metric(teacher, eval_data)},
        "student": {"class": type(student).__name__},
        "config": _config_dict(config),
        "stages": [],
        "evaluated_on": None if eval_data is None else {"set": "eval", "source": str(eval_data.source),
                                                         "samples": len(eval_data)},
        "files": {},
    }
    t0 = time.perf_counter()
    _stage(report, "initial", student, eval_data, t0)
    if config.qat is not None and config.export is not None:
        _check_formats(student, example, config.export)  # an op a format cannot write fails before training

    plan = None
    if config.prune is not None:
        t0 = time.perf_counter()
        result = prune(student, example, config.prune)
        student, plan = result.model, result.plan
        _stage(report, "prune", student, eval_data, t0, mode=plan["mode"])
        t0 = time.perf_counter()
        if reestimate_bn(student, [d for d in (train, transfer) if d is not None], batches=config.bn_batches):
            _stage(report, "bn_reestimate", student, eval_data, t0)
    student.eval()

    initial = copy.deepcopy(student) if config.baseline else None
    steps = None
    if config.distill is not None:
        t0 = time.perf_counter()
        result = distill(teacher, student, train, _for_stage(config.distill, "distill"), transfer=transfer,
                         eval_data=eval_data, progress=progress)
        student, steps = result.student.cpu().eval(), result.steps
        _stage(report, "distill", student, eval_data, t0, steps=steps, history=_jsonable(result.history))
    if initial is not None:
        # The same student, the same optimizer steps (labelled batches only, so more passes over them when the
        # distillation also saw transfer batches), no teacher: what the teacher added is the difference.
        t0 = time.perf_counter()
        base = train_baseline(initial, train, _for_stage(config.distill, "baseline"), eval_data=eval_data,
                              progress=progress, steps=steps)
        report["baseline"] = {"metric": _metric(base.student, eval_data), "steps": base.steps,
                              "history": _jsonable(base.history), "seconds": round(time.perf_counter() - t0, 3)}
        distilled = report["stages"][-1]["metric"]
        if distilled is not None and report["baseline"]["metric"] is not None:
            report["gain_over_baseline"] = distilled - report["baseline"]["metric"]

    from compress.layers.prune import finalize

    finalize(student)  # masks → zeros in the weights: nothing mask-shaped is saved, exported or trained
    int8_model = None
    if config.qat is not None:
        t0 = time.perf_counter()
        int8_model = _qat(teacher, student, train, config, transfer, calib, example, progress)
        _stage(report, "qat", int8_model, eval_data, t0)

    if out is not None:
        report["files"].update(_save_student(student, example, plan, out))
        if config.export is not None:
            # Without eval data the files are verified and timed on training inputs, but no accuracy is claimed.
            _export_stage(report, teacher, student, int8_model, example, out, config.export, eval_data or train,
                          score=eval_data is not None)
        report["files"]["report"] = str(out / "report.json")
        write_json_atomic(out / "report.json", report)
    return ScheduleResult(student, int8_model, report)


def _qat(teacher, student, train, config: ScheduleConfig, transfer, calib, example, progress) -> nn.Module:
    """Prepare (fake quantization), calibrate, distil with the teacher, convert: the int8 model."""
    options = config.export or QuantizeOptions()
    prepared = prepare(copy.deepcopy(student), example, options.quant_config(), qat=True)
    calibrate(prepared, calib if calib is not None else train.take(min(len(train), CALIB_SAMPLES)),
              batch_size=options.batch_size, progress=progress)
    # The BN statistics were re-estimated and trained in float; frozen for (at least) the last epoch, the
    # folded conv that QAT trains last is the one that is exported.
    qat = _for_stage(config.qat, "qat")
    qat = replace(qat, freeze_bn_epochs=max(qat.freeze_bn_epochs, 1))
    handles = lock_zero_weights(prepared)
    try:
        prepared = distill(teacher, prepared, train, qat, transfer=transfer, progress=progress).student
    finally:
        for h in handles:
            h.remove()
    return convert(prepared.cpu().eval())


def _check_formats(student: nn.Module, example, options: QuantizeOptions) -> None:
    """Raise now, naming the op, if a requested format cannot write the int8 student.

    Checked on the student before pruning: pruning changes widths, never which ops run, and a masked copy
    cannot be checked (deep-copied parametrized modules share their class, so baking a copy's masks in
    strips the original's)."""
    from compress.ops.coverage import check_coverage

    prepared = prepare(copy.deepcopy(student), example, options.quant_config(), qat=True)
    check_coverage(prepared, tuple(f.value for f in options.formats))


def _save_student(student: nn.Module, example, plan: dict | None, out: Path) -> dict[str, str]:
    from compress.passes.prune import export_program, save_plan

    files = {"student_pt2": out / "student.pt2", "student_state_dict": out / "student_state_dict.pt"}
    torch.export.save(export_program(student, example), str(files["student_pt2"]))
    torch.save(student.state_dict(), files["student_state_dict"])
    if plan is not None:
        files["plan"] = out / "plan.json"
        save_plan(plan, files["plan"])
    return {k: str(v) for k, v in files.items()}


def _export_stage(report: dict, teacher, student, int8_model, example, out: Path, options: QuantizeOptions,
                  evaluation: Dataset, *, score: bool) -> None:
    """Export the student (fp32, and int8 after QAT), verify each file in its runtime, measure it."""
    example1 = tuple(t[:1] for t in example)
    eval_x = tuple(a[:512] for a in evaluation.arrays)
    batches = _batches(eval_x, options.batch_size)
    models = {"fp32": student, **({"int8": int8_model} if int8_model is not None else {})}
    report["formats"] = {}
    for fmt in options.formats:
        backend = _BACKENDS[fmt]
        section: dict = {"runtime": backend.runtime}
        logits = {}
        for kind, model in models.items():
            path = out / f"student_{kind}{backend.suffix}"
            info = backend.export(model, example1, path, options, kind == "int8")
            parity = backend.verify(path, model, batches, info)
            if not parity.passed:
                raise VerificationError(
                    f"the {kind} {fmt.value} student does not match the torch model ({parity.summary()}); see "
                    "report.json, try --target arm, and report the model if it persists")
            logits[kind] = _predict(backend.runner(path, 1), evaluation.arrays, options.batch_size)
            entry = {"bytes": path.stat().st_size, "parity": {k: v for k, v in parity.to_dict().items()
                                                              if k not in ("outputs", "path")}}
            if score and evaluation.y is not None and logits[kind].ndim == 2:
                entry["accuracy"] = float(np.mean(logits[kind].argmax(-1) == evaluation.y))
            section[kind] = entry
            report["files"][f"student_{kind}_{fmt.value}"] = str(path)
        if "int8" in section:
            section["int8"]["size_ratio"] = section["int8"]["bytes"] / section["fp32"]["bytes"]
            if logits["int8"].ndim == 2 and logits["int8"].shape[1] > 1:
                section["int8"]["top1_agreement"] = float(np.mean(logits["fp32"].argmax(-1) ==
                                                                  logits["int8"].argmax(-1)))
        report["formats"][fmt.value] = section
    if Format.ONNX in options.formats:
        report["latency"] = _latencies(teacher, example1, out, models, options, evaluation)
    if "int8" in models and report["evaluated_on"] is not None:
        quality = {"evaluated_on": {**report["evaluated_on"], "classes": None},
                   "formats": {f: s for f, s in report["formats"].items() if "int8" in s}}
        report["warnings"] = quality_warnings(quality)[1]


def _latencies(teacher, example1, out: Path, models: dict, options: QuantizeOptions, evaluation: Dataset) -> dict:
    """Median onnxruntime latency (batch 1, 1 thread) and file size of the teacher and of each student file."""
    from compress.runtime import measure_onnx

    feeds_x = tuple(a[:1] for a in evaluation.arrays)
    result: dict = {"runtime": "onnxruntime", "threads": 1, "batch": 1}
    with tempfile.TemporaryDirectory() as tmp:  # the teacher's file is measured, not delivered
        teacher_path = Path(tmp) / "teacher_fp32.onnx"
        _BACKENDS[Format.ONNX].export(teacher, example1, teacher_path, options, False)
        paths = {"teacher_fp32": teacher_path, **{f"student_{k}": out / f"student_{k}.onnx" for k in models}}
        for name, path in paths.items():
            measured = measure_onnx(path, _feeds(path, feeds_x), threads=1, warmup=10, runs=options.latency_runs)
            result[name] = {"latency_ms_median": measured["latency"]["median"] * 1e3, "bytes": path.stat().st_size}
    for name in paths:
        if name != "teacher_fp32":
            result[name]["speedup_vs_teacher"] = (result["teacher_fp32"]["latency_ms_median"]
                                                  / result[name]["latency_ms_median"])
    return result


def _feeds(path: Path, arrays: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return dict(zip(names, arrays, strict=True))


def _config_dict(config: ScheduleConfig) -> dict:
    def part(value):
        if value is None:
            return None
        return value.to_dict() if hasattr(value, "to_dict") else _jsonable(value.__dict__)

    return {"prune": part(config.prune), "distill": part(config.distill), "qat": part(config.qat),
            "export": part(config.export), "baseline": config.baseline, "bn_batches": config.bn_batches}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return str(value)
