"""``compress distill --teacher T --student-arch B --train DATA -o OUTDIR``: a small model trained from a large one.

The thin layer over :func:`compress.schedule.run_schedule`: [prune →] distill [→ QAT with the teacher still
distilling → convert] → export → verify. Writes OUTDIR/student.pt2 (loadable by every command without --arch),
student_state_dict.pt, plan.json (with --prune), student_fp32.onnx (and .tflite), student_int8.onnx with --qat,
and report.json (teacher metric, the metric after every stage, --baseline, sizes and onnxruntime latencies).
Training checkpoints live beside OUTDIR in ``.OUTDIR.distill-checkpoints/`` until the run succeeds, so an
interrupted run continues with ``--resume``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from compress.cli._common import (
    check_labels,
    check_output_dir,
    debug_option,
    echo_warnings,
    finish_report,
    handle_errors,
    progress_enabled,
    staged_output,
    stdout_console,
)
from compress.cli.quantize import TARGET_CHOICES, _spec_files, parse_formats
from compress.errors import ConfigError, DataError

# Literal copies of compress.distill's names, so `compress --help` does not import torch (tests compare them).
DERIVE_CHOICES = ("every-other", "narrow")
PRUNE_KEYS = {"channels": float, "sparsity": float, "nm": str, "round_to": int, "max_sparsity": float,
              "criterion": str, "scope": str}


def checkpoint_dir(out: Path) -> Path:
    """Where a run's training checkpoints wait for ``--resume``: a hidden sibling of OUTDIR (never inside the
    staging, which a failed run removes)."""
    return out.parent / f".{out.name}.distill-checkpoints"


def parse_prune_spec(text: str):
    """``"channels=0.5,round_to=8"`` → :class:`compress.passes.prune.PruneConfig` (one mode: channels, sparsity, nm).

    Example:
        >>> parse_prune_spec("channels=0.5,round_to=8").round_to
        8
        >>> parse_prune_spec("nm=2:4").mode.value
        'nm'
    """
    from compress.passes.prune import PruneConfig

    fields = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in PRUNE_KEYS:
            raise ConfigError(f"--prune {text!r}: cannot read {part!r}; write KEY=VALUE pairs such as "
                              f"channels=0.5,round_to=8, sparsity=0.8 or nm=2:4 (keys: {', '.join(PRUNE_KEYS)})")
        try:
            fields[key] = PRUNE_KEYS[key](value.strip())
        except ValueError:
            raise ConfigError(f"--prune {text!r}: {key} takes a {PRUNE_KEYS[key].__name__}, got {value!r}; "
                              "e.g. channels=0.5") from None
    if not fields:
        raise ConfigError("--prune needs a mode: channels=0.5 (structured), sparsity=0.8 or nm=2:4")
    return PruneConfig(**fields)


def parse_features(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``("teacher.layer3:student.layer2",)`` → ``(("layer3", "layer2"),)``; the role prefixes are optional.

    Example:
        >>> parse_features(("teacher.layer3:student.layer2", "conv2:head_conv"))
        (('layer3', 'layer2'), ('conv2', 'head_conv'))
    """
    out = []
    for pair in pairs:
        t, sep, s = pair.partition(":")
        t, s = t.strip(), s.strip()
        t = t[len("teacher."):] if t.startswith("teacher.") else t
        s = s[len("student."):] if s.startswith("student.") else s
        if not sep or not t or not s:
            raise ConfigError(f"--feature {pair!r}: write TEACHER_PATH:STUDENT_PATH, e.g. "
                              "--feature teacher.layer3:student.layer2 (module paths, as in compress inspect)")
        out.append((t, s))
    return tuple(out)


def _losses(text: str | None, features: tuple) -> tuple[str, ...] | None:
    if text is None:
        return ("kd", "feature") if features else None
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not names:
        raise ConfigError(f"--loss {text!r} names no loss; e.g. --loss kd or --loss kd,feature")
    return names  # DistillConfig checks the names and that pair losses have --feature pairs


def _distill_config(epochs, lr, batch_size, temperature, alpha, losses, features, seed, resume, ckpt: Path):
    from compress.distill import DistillConfig

    given = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size),
                               ("temperature", temperature), ("alpha", alpha), ("losses", losses)) if v is not None}
    return DistillConfig(**given, features=features, seed=seed, resume=resume, checkpoint_dir=str(ckpt))


def _load(path, arch, trust_pickle: bool, option: str):
    """:func:`compress.io.load_model`, its messages naming this command's option (--teacher-arch, ...)."""
    from compress.errors import ModelLoadError
    from compress.io import load_model

    try:
        return load_model(path, arch=arch, trust_pickle=trust_pickle)
    except ModelLoadError as exc:
        if "--arch" not in str(exc):
            raise
        raise type(exc)(str(exc).replace("--arch", option)) from exc


def _student(student, student_arch, derive, teacher, example, trust_pickle, seed):
    import torch

    from compress.io import build_arch

    chosen = [flag for flag, v in (("--student-arch", student_arch or student), ("--derive", derive)) if v]
    if len(chosen) != 1:
        raise ConfigError("choose the student: --student-arch MODULE:CALLABLE (with --student S.pt for initial "
                          "weights), --student S.pt2, or --derive every-other|narrow from the teacher"
                          + ("; got both" if len(chosen) > 1 else ""))
    if student is not None:
        return _load(student, student_arch, trust_pickle, "--student-arch")
    if student_arch is not None:
        torch.manual_seed(seed)  # a fresh student's initial weights follow --seed
        return build_arch(student_arch).eval()
    from compress.distill import derive_student

    return derive_student(teacher, how=derive, example_inputs=example)


@click.command("distill")
@click.option("--teacher", "teacher_path", required=True, metavar="T",
              help="The trained large model: a state dict (with --teacher-arch), a .pt2, or a pickle (--trust-pickle).")
@click.option("--teacher-arch", metavar="MODULE:CALLABLE", help="Builds the model the teacher's state dict loads into.")
@click.option("--student-arch", metavar="MODULE:CALLABLE", help="Builds the student (freshly initialised from --seed).")
@click.option("--student", "student_path", metavar="S",
              help="Initial student weights (a state dict with --student-arch, or a .pt2).")
@click.option("--derive", type=click.Choice(DERIVE_CHOICES), default=None,
              help="Derive the student from the teacher: every other block (initialised from the teacher's) or "
                   "narrower (structured pruning as initialisation).")
@click.option("--train", "train_spec", required=True, metavar="DATA",
              help="Labelled training data (.npz with x and y).")
@click.option("--transfer", "transfer_spec", metavar="DATA",
              help="Unlabelled inputs (x only) the teacher labels, mixed with the --train batches.")
@click.option("--eval", "eval_spec", metavar="DATA", help="Labelled held-out data: the metric after every stage.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Distillation epochs [default: 3].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate [default: 1e-3].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [default: 32].")
@click.option("--loss", "loss_names", metavar="LOSSES", default=None,
              help="Losses, comma-separated: kd, feature, attention [default: kd; kd,feature with --feature].")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Softening temperature of logit KD [default: 4].")
@click.option("--alpha", type=click.FloatRange(0, 1), default=None,
              help="Weight of the teacher's loss against the hard-label loss [default: 0.9].")
@click.option("--feature", "feature_pairs", metavar="T:S", multiple=True,
              help="Match a teacher module's output with a student's (repeatable): teacher.layer3:student.layer2.")
@click.option("--prune", "prune_spec", metavar="SPEC",
              help="Prune the student first: channels=0.5[,round_to=8], sparsity=0.8 or nm=2:4.")
@click.option("--qat", is_flag=True,
              help="Quantization-aware training with the teacher still distilling, then int8 files.")
@click.option("--qat-epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Epochs of the QAT stage.")
@click.option("--qat-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate of the QAT stage [default: a tenth of --lr].")
@click.option("--calib", "calib_spec", metavar="DATA",
              help="--qat: calibration inputs [default: the first 256 --train samples].")
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="x86", show_default=True,
              help="--qat: x86 (uint8 activations in ONNX) or arm (int8).")
@click.option("--baseline", is_flag=True, help="Also train the same student with the same budget and no teacher.")
@click.option("--format", "formats", metavar="FORMATS", default="onnx", show_default=True,
              help="Student files to write, comma-separated: onnx, tflite.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds initialisation and batch order.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last epoch checkpoint.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading fully pickled models. Unpickling runs code from the file: trusted files only.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory. Must not exist unless --force.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists (only after the new output is complete).")
@debug_option
@handle_errors
def distill_command(teacher_path, teacher_arch, student_arch, student_path, derive, train_spec, transfer_spec,
                    eval_spec, epochs, lr, batch_size, loss_names, temperature, alpha, feature_pairs, prune_spec,
                    qat, qat_epochs, qat_lr, calib_spec, target, baseline, formats, seed, resume, trust_pickle, out,
                    force) -> None:
    """Distil a large TEACHER into a small student: [prune →] distill [→ QAT → int8] → verified ONNX / TFLite.

    Models are state dicts (.pt/.pth/.safetensors, with --teacher-arch / --student-arch), torch.export
    programs (.pt2), or pickled modules (only with --trust-pickle).
    """
    format_names = parse_formats(formats)
    features = parse_features(feature_pairs)
    losses = _losses(loss_names, features)
    prune_config = parse_prune_spec(prune_spec) if prune_spec is not None else None
    if not qat:
        given = [f for f, v in (("--calib", calib_spec), ("--qat-lr", qat_lr)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to quantization-aware training; add --qat")
    inputs = [Path(teacher_path), *([Path(student_path)] if student_path else []),
              *(f for spec in (train_spec, transfer_spec, eval_spec, calib_spec, teacher_arch, student_arch)
                for f in _spec_files(spec))]
    check_output_dir(out, inputs=inputs, force=force)
    ckpt = checkpoint_dir(out)
    if resume and not ckpt.is_dir():
        raise ConfigError(f"--resume found no checkpoints of an earlier run writing {out} (looked for {ckpt}); "
                          "drop --resume to start afresh")

    from compress.io import check_fits, load_data, match_model_dtype
    from compress.pipeline import QuantizeOptions
    from compress.schedule import ScheduleConfig, run_schedule

    teacher = _load(teacher_path, teacher_arch, trust_pickle, "--teacher-arch")
    datasets = {}
    for role, spec in (("train", train_spec), ("eval", eval_spec), ("transfer", transfer_spec),
                       ("calib", calib_spec)):
        if spec is not None:
            datasets[role] = match_model_dtype(teacher, load_data(spec))
            outputs = check_fits(teacher, datasets[role])
            if role in ("train", "eval"):
                if datasets[role].y is None:
                    raise DataError(f"--{role} {spec} has no labels y: pass an .npz with both x and y (unlabelled "
                                    "inputs go to --transfer)")
                check_labels(datasets[role], outputs, f"--{role}")
    train = datasets["train"]
    net = _student(student_path, student_arch, derive, teacher, train.example(min(2, len(train))), trust_pickle,
                   seed)
    for role, data in datasets.items():
        outputs = check_fits(net, data)
        if role in ("train", "eval"):
            check_labels(data, outputs, f"--{role} (student)")
    _same_outputs(teacher, net, train)

    distill_config = _distill_config(epochs, lr, batch_size, temperature, alpha, losses, features, seed, resume, ckpt)
    qat_config = None
    if qat:
        from dataclasses import replace

        qat_config = replace(distill_config, epochs=qat_epochs, lr=qat_lr or distill_config.lr / 10,
                             features=(), losses=("kd",))
    export = QuantizeOptions(formats=format_names, target=target,
                             **({"batch_size": batch_size} if batch_size is not None else {}))
    config = ScheduleConfig(prune=prune_config, distill=distill_config, qat=qat_config, export=export,
                            baseline=baseline)
    if not resume:
        shutil.rmtree(ckpt, ignore_errors=True)  # a failed run's checkpoints; this run starts afresh
    with staged_output(out, kind="distill") as staging:
        result = run_schedule(teacher, net, train, staging, config, transfer=datasets.get("transfer"),
                              eval_data=datasets.get("eval"), calib=datasets.get("calib"), progress=progress_enabled())
        report = finish_report(result.report, staging, out)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: nothing left to resume

    console = stdout_console()
    console.print(render(report))
    echo_warnings(report.get("warnings", []))
    written = ", ".join(f"{p.name} ({p.stat().st_size / 1024:.1f} kB)" for p in sorted(out.iterdir())
                        if p.is_file() and not p.name.startswith("."))
    console.print(f"wrote {out}: {written}", soft_wrap=True, highlight=False)


def _same_outputs(teacher, student, data) -> None:
    """Logit KD compares the two models' outputs class by class: their shapes must agree."""
    import torch

    x = data.example(min(2, len(data)))
    with torch.no_grad():
        t, s = teacher(*x), student(*x)
    t, s = (v[0] if isinstance(v, tuple | list) else v for v in (t, s))
    if tuple(t.shape) != tuple(s.shape):
        raise ConfigError(f"the teacher outputs {tuple(t.shape[1:])} per sample but the student "
                          f"{tuple(s.shape[1:])}; distillation needs the same classes: build the student with "
                          f"the teacher's number of outputs")


def render(report: dict):
    """The one table the command prints: teacher, the student after each stage, the baseline, the files."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from compress.pipeline import _human_bytes

    latency = report.get("latency", {})
    onnx = report.get("formats", {}).get("onnx", {})
    table = Table(title=f"compress distill — {report['teacher']['class']} → {report['student']['class']}",
                  title_justify="left")
    for col in ("model", "accuracy (eval)", "parameters", "ONNX size", "latency (ort)", "vs teacher"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}%"

    def speed(key):
        entry = latency.get(key)
        if not entry:
            return "–", "–", "–"
        ratio = entry.get("speedup_vs_teacher")
        versus = "1.00×" if ratio is None else f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"
        return _human_bytes(entry["bytes"]), f"{entry['latency_ms_median']:.3f} ms", versus

    teacher = report["teacher"]
    table.add_row("teacher (fp32)", pct(teacher["metric"]), f"{teacher['params']:,}", *speed("teacher_fp32"))
    stages = report["stages"]
    last_float = max((i for i, s in enumerate(stages) if s["stage"] != "qat"), default=0)
    for i, s in enumerate(stages):
        label = {"initial": "student: initial", "prune": "student: pruned", "bn_reestimate": "  BN re-estimated",
                 "distill": "student: distilled", "qat": "student: QAT → int8 (torch)"}.get(s["stage"], s["stage"])
        cells = speed("student_fp32") if i == last_float else ("", "", "")
        table.add_row(label, pct(s["metric"]), f"{s['params']:,}", *cells)
    if "int8" in onnx:
        table.add_row("student int8 (onnxruntime)", pct(onnx["int8"].get("accuracy")), "", *speed("student_int8"))
    if "baseline" in report:
        table.add_row("baseline: same student, no teacher", pct(report["baseline"]["metric"]), "", "", "", "")
    notes = []
    if "gain_over_baseline" in report:
        notes.append(f"distillation vs baseline: {100 * report['gain_over_baseline']:+.2f} points")
    if latency:
        notes.append("latency: median, batch 1, 1 thread, onnxruntime")
    for fmt, section in report.get("formats", {}).items():
        for kind in ("fp32", "int8"):
            if kind in section:
                notes.append(f"{fmt} {kind} vs torch: {section[kind]['parity']['passed'] and 'passed' or 'FAILED'}")
    where = report.get("evaluated_on")
    if where is None:
        notes.append("no --eval: no accuracy figures")
    return Group(table, Text(" · ".join(notes), style="dim"))


def render_demo_rows(distilled: dict):
    """``compress demo``'s distillation rows: the teacher, the distilled demo CNN and the same-budget baseline."""
    from rich.table import Table

    table = Table(title=f"distilled: a DemoCNN {distilled['teacher_width']} channels wide teaches the demo CNN "
                        f"({distilled['student_width']}) from {distilled['labelled']} labels + "
                        f"{distilled['unlabelled']} unlabelled digits", title_justify="left")
    for col in ("torch fp32", "accuracy (eval)", "trained on"):
        table.add_column(col, justify="left" if col != "accuracy (eval)" else "right", no_wrap=True)
    table.add_row(f"teacher (width {distilled['teacher_width']})", f"{100 * distilled['teacher_accuracy']:.2f}%",
                  f"{distilled['labelled'] + distilled['unlabelled']} labelled digits")
    table.add_row("demo CNN, distilled", f"{100 * distilled['distilled_accuracy']:.2f}%",
                  f"{distilled['labelled']} labels + the teacher on {distilled['unlabelled']} more, "
                  f"{distilled['steps']} steps")
    table.add_row("demo CNN, baseline (no teacher)", f"{100 * distilled['baseline_accuracy']:.2f}%",
                  f"the {distilled['labelled']} labels alone, the same {distilled['steps']} steps")
    return table
