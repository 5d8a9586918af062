"""``compress quantize MODEL -o OUTDIR --calib DATA``: int8 ONNX (and TFLite) + report.json from a float model."""

from __future__ import annotations

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
from compress.errors import ConfigError, VerificationError

# Literal copies of compress.quant.spec.ObserverKind / compress.pipeline.Target / Format values, so
# `compress --help` does not import torch; tests/cli checks they stay equal to the enums.
OBSERVER_CHOICES = ("minmax", "moving_average", "percentile", "mse", "auto")
# compress.passes.ptq.Technique values with one line each for --help (tests/passes/ptq checks they match).
PTQ_TECHNIQUES = {
    "cle": "cross-layer equalization of consecutive conv/linear weight ranges (depthwise nets)",
    "smoothquant": "move transformer activation outliers into the linears' weights (LayerNorm -> linear)",
    "outliers": "report LayerNorm/GELU outlier channels, migrate LayerNorm ones into linears (auto if found)",
    "adaround": "learned up/down rounding of conv/linear weights on the calibration data",
    "bias-correction": "remove the mean output shift quantization causes, layer by layer",
}
PTQ_EPILOG = "\b\n--ptq techniques (comma-separated, e.g. --ptq cle,bias-correction):\n" + "\n".join(
    f"  {name:<16} {line}" for name, line in PTQ_TECHNIQUES.items())
TARGET_CHOICES = ("x86", "arm")
FORMAT_CHOICES = ("onnx", "tflite")
# compress.quant.config.QuantMode values a whole model can take ("float" is per layer: --float-layer). A mode
# that chooses per layer (auto) is added here and resolved into layer modes before quantize_model.
MODE_CHOICES = ("static", "dynamic", "weight-only")
LAYER_MODE_CHOICES = (*MODE_CHOICES, "float")


def parse_layer_modes(pairs: tuple[str, ...], float_layers: tuple[str, ...] = ()) -> dict[str, str]:
    """``("encoder.fc=dynamic",)`` and ``--float-layer`` names → ``{module path: mode}``.

    Example:
        >>> parse_layer_modes(("fc1=weight-only",), ("head",))
        {'fc1': 'weight-only', 'head': 'float'}
    """
    modes = {}
    for pair in pairs:
        name, sep, mode = (part.strip() for part in pair.partition("="))
        if not sep or not name or mode not in LAYER_MODE_CHOICES:
            raise ConfigError(f"--layer-mode {pair!r} must be NAME=MODE with MODE one of "
                              f"{', '.join(LAYER_MODE_CHOICES)} (e.g. --layer-mode encoder.fc1=dynamic)")
        modes[name] = mode
    for name in float_layers:
        if modes.get(name, "float") != "float":
            raise ConfigError(f"layer {name!r} is given both --float-layer and --layer-mode {name}={modes[name]}; "
                              "keep one")
        modes[name] = "float"
    return modes


def parse_formats(text: str) -> tuple[str, ...]:
    """``"onnx,tflite"`` → ``("onnx", "tflite")``; unknown or empty names raise :class:`ConfigError`.

    Example:
        >>> parse_formats("tflite, onnx")
        ('tflite', 'onnx')
    """
    names = [part.strip().lower() for part in text.split(",")]
    unknown = [n for n in names if n not in FORMAT_CHOICES]
    if unknown or not names:
        bad = ", ".join(repr(n) for n in unknown) or repr(text)
        raise ConfigError(f"unknown format {bad} in --format {text!r}; choose from {', '.join(FORMAT_CHOICES)} "
                          "(comma-separated, e.g. --format onnx,tflite)")
    return tuple(dict.fromkeys(names))


def _spec_files(spec: str | None) -> list[Path]:
    """Files a data spec reads (the .npz, or the loader's .py file), for the output-path checks."""
    if spec is None:
        return []
    return [Path(spec), Path(spec.rpartition(":")[0])] if ":" in spec else [Path(spec)]


@click.command("quantize", epilog=PTQ_EPILOG)
@click.argument("model", metavar="MODEL")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory (model.onnx, model_fp32.onnx, report.json; model.tflite and "
                   "model_fp32.tflite with --format tflite). Must not exist unless --force.")
@click.option("--calib", required=True, metavar="DATA",
              help="Calibration data: .npz with x (and optional y), or MODULE:CALLABLE returning batches.")
@click.option("--eval", "eval_spec", metavar="DATA", help="Evaluation data with labels y: accuracy in the report.")
@click.option("--qat", is_flag=True, help="Quantization-aware training after calibration (needs --train).")
@click.option("--train", "train_spec", metavar="DATA", help="Labelled training data for --qat.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="QAT epochs [default: 3].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="QAT learning rate [default: 1e-3].")
@click.option("--mode", type=click.Choice((*MODE_CHOICES, "auto")), default="static", show_default=True,
              help="static: int8 weights and calibrated int8 activations; dynamic: int8 weights, activations "
                   "quantized per call at run time (transformers, LSTMs); weight-only: int8 weights, float "
                   "compute (smallest file at float accuracy); auto: per layer, the fastest of these as timed "
                   "alone at its real shapes in the target runtime (onnxruntime / LiteRT, cached) that keeps "
                   "--max-drop [default 1 point]; float only where no int8 mode keeps it.")
@click.option("--max-drop", "max_drop", type=click.FloatRange(min=0), default=None, metavar="POINTS",
              help="Budget in percentage points of the --metric vs fp32: each layer's sensitivity is measured and "
                   "the fewest layers leave --mode (for float, or dynamic / weight-only when that suffices); "
                   "the per-layer table is printed and in report.json.")
@click.option("--metric", "metric", metavar="NAME|MODULE:CALLABLE", default=None,
              help="Metric of --max-drop / --mode auto: accuracy (needs labels), agreement (top-1 with fp32), "
                   "cosine (with fp32), or MODULE:CALLABLE called as fn(outputs, batch) -> float, higher is "
                   "better [default: accuracy with labels, else agreement for [N, C] outputs, else cosine].")
@click.option("--no-measure", "no_measure", is_flag=True,
              help="--mode auto / --max-drop: order each layer's modes by the latency prior static < dynamic < "
                   "weight-only < float instead of timing them (at most about 20 s, cached per machine).")
@click.option("--float-layer", "float_layers", multiple=True, metavar="NAME",
              help="Keep the layer (or every layer under the module) at this path in float; repeatable.")
@click.option("--layer-mode", "layer_mode_pairs", multiple=True, metavar="NAME=MODE",
              help="Mode of one layer (or module subtree), overriding --mode: static, dynamic, weight-only or "
                   "float; repeatable.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor instead of per output channel.")
@click.option("--observer", type=click.Choice(OBSERVER_CHOICES), default="minmax", show_default=True,
              help="How activation ranges are calibrated; auto: minmax, percentile or MSE per tensor, whichever "
                   "gives the least model-output error.")
@click.option("--ptq", "ptq", metavar="TECHNIQUES", default="",
              help="Advanced post-training quantization, comma-separated (listed below).")
@click.option("--target", type=click.Choice(TARGET_CHOICES), default="x86", show_default=True,
              help="x86: uint8 activations (fastest in onnxruntime on x86); arm: int8 activations.")
@click.option("--format", "formats", metavar="FORMATS", default="onnx", show_default=True,
              help="Files to write, comma-separated: onnx, tflite (e.g. onnx,tflite). Each is verified in its "
                   "runtime (onnxruntime, LiteRT).")
@click.option("--opset", type=click.IntRange(min=13), default=None,
              help="ONNX opset of the int8 file [default: 17]; 20+ writes GELU as the standard Gelu op (below 20 "
                   "it is onnxruntime's com.microsoft Gelu).")
@click.option("--int8-io", is_flag=True,
              help="TFLite: int8 input and output tensors instead of float with QUANTIZE/DEQUANTIZE at the edges.")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="Builds the model a state dict is loaded into, e.g. compress.models:DemoCNN or nets.py:build.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a fully pickled model. Unpickling runs code from the file: trusted files only.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists (only after the new output is complete).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [default: 32].")
@click.option("--accept-degraded", is_flag=True,
              help="Keep an int8 model whose predictions collapsed (top-1 agreement with fp32 < 50%) instead of "
                   "failing with exit code 9.")
@click.option("--keep-unverified", is_flag=True,
              help="When a file fails verification in its runtime, still write OUTDIR (report.json marks the "
                   "failure and names the op); the exit code stays 6.")
@debug_option
@handle_errors
def quantize_command(model: str, out: Path, calib: str, eval_spec: str | None, qat: bool, train_spec: str | None,
                     epochs: int | None, lr: float | None, mode: str, float_layers: tuple[str, ...],
                     layer_mode_pairs: tuple[str, ...], per_tensor: bool, observer: str, target: str,
                     formats: str, int8_io: bool, arch: str | None, trust_pickle: bool, force: bool,
                     batch_size: int | None, accept_degraded: bool, ptq: str, keep_unverified: bool,
                     max_drop: float | None, metric: str | None, no_measure: bool, opset: int | None) -> None:
    """Quantize MODEL to int8 ONNX (and TFLite), verify each file against the torch simulation, write a report.

    MODEL is a state dict (.pt/.pth/.safetensors, with --arch), a torch.export program (.pt2), or a pickled
    module (.pt, only with --trust-pickle).
    """
    format_names = parse_formats(formats)
    layer_modes = parse_layer_modes(layer_mode_pairs, float_layers)
    if metric is not None and max_drop is None and mode != "auto":
        raise ConfigError("--metric is the metric of --max-drop / --mode auto; add --max-drop POINTS (e.g. 1)")
    if no_measure and max_drop is None and mode != "auto":
        raise ConfigError("--no-measure applies to --mode auto / --max-drop; add --mode auto or --max-drop POINTS")
    if int8_io and "tflite" not in format_names:
        raise ConfigError("--int8-io applies to TFLite files; add --format tflite (or onnx,tflite)")
    if opset is not None and "onnx" not in format_names:
        raise ConfigError("--opset applies to the ONNX file; drop it, or add onnx to --format")
    if not qat:
        given = [flag for flag, value in (("--train", train_spec), ("--epochs", epochs), ("--lr", lr)) if value is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to quantization-aware training; add --qat")
    elif train_spec is None:
        raise ConfigError("--qat needs labelled training data; pass --train DATA (an .npz with x and y)")
    inputs = [Path(model), *_spec_files(calib), *_spec_files(eval_spec), *_spec_files(train_spec),
              *_spec_files(arch)]
    check_output_dir(out, inputs=inputs, force=force)

    from compress.io import check_fits, load_data, load_model, match_model_dtype
    from compress.passes.sensitivity import sensitivity_config
    from compress.pipeline import QuantizeOptions, Target, quantize_model, render_summary
    from compress.quant.spec import ObserverKind

    extra = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size)) if v is not None}
    extra["sensitivity"] = sensitivity_config(max_drop, metric, auto=mode == "auto", formats=format_names,
                                              target=target, measure=not no_measure)
    mode = "static" if mode == "auto" else mode  # auto starts from static; the plan moves layers off it
    options = QuantizeOptions(
        per_tensor=per_tensor, observer=ObserverKind(observer), target=Target(target), qat=qat,
        formats=format_names, tflite_int8_io=int8_io, accept_degraded=accept_degraded, mode=mode,
        keep_unverified=keep_unverified, layer_modes=layer_modes, ptq=tuple(ptq.split(",")), **extra,
        **({} if opset is None else {"opset": opset}),
    )
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    datasets = {}
    for role, spec in (("calib", calib), ("eval", eval_spec), ("train", train_spec)):
        if spec is not None:
            datasets[role] = match_model_dtype(net, load_data(spec))
            check_labels(datasets[role], check_fits(net, datasets[role]), f"--{role}")

    with staged_output(out, kind="quantize") as staging:
        report = quantize_model(
            net, datasets["calib"], staging, options,
            eval_data=datasets.get("eval"), train_data=datasets.get("train"), progress=progress_enabled(),
        )
        report = finish_report(report, staging, out)

    console = stdout_console()
    console.print(render_summary(report))
    if "sensitivity" in report:
        from compress.passes.sensitivity import render_sensitivity

        console.print(render_sensitivity(report["sensitivity"]))
    if report.get("ptq", {}).get("outliers", {}).get("sites"):
        from compress.passes.ptq import render_outliers

        console.print(render_outliers(report["ptq"]["outliers"]), highlight=False, soft_wrap=True)
    echo_warnings(report.get("warnings", []))
    written = ", ".join(f"{p.name} ({p.stat().st_size / 1024:.1f} kB)" for p in sorted(out.iterdir())
                        if p.is_file() and not p.name.startswith("."))
    console.print(f"wrote {out}: {written}", soft_wrap=True, highlight=False)
    if report.get("verification_failure"):
        kept = out / "report.json"
        raise VerificationError(f"{report['verification_failure']}; written anyway (--keep-unverified)"
                                + (f", {kept} marks the failure" if kept.is_file() else ""))
