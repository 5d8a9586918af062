"""``compress export MODEL --format onnx|tflite -o FILE``: a float model as one verified ONNX or TFLite file.

The file is written beside its destination under a hidden temporary name, run in its runtime (onnxruntime or
LiteRT) against the torch model, and renamed into place only when it agrees (float: max |diff| / max |ref|
≤ 1e-4). A failed export or verification leaves nothing behind; ``--force`` replaces an existing file only
after the new one has passed.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from compress.cli._common import (
    check_output_file,
    debug_option,
    handle_errors,
    is_out_of_memory,
    quiet_library,
    stdout_console,
)
from compress.cli._shapes import check_shape_memory, parse_shape, shape_error
from compress.cli.quantize import FORMAT_CHOICES, _spec_files
from compress.errors import ConfigError, DataError

_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
_RUNTIME = {"onnx": "onnxruntime", "tflite": "LiteRT"}
VERIFY_SAMPLES = 8
VERIFY_BATCHES = 3


def _resolve_format(fmt: str | None, out: Path) -> str:
    by_suffix = next((f for f, s in _SUFFIX.items() if out.suffix.lower() == s), None)
    if fmt is None:
        if by_suffix is None:
            raise ConfigError(f"cannot tell the format from {out.name!r}; pass --format onnx or --format tflite")
        return by_suffix
    fmt = fmt.lower()
    if by_suffix is not None and by_suffix != fmt:
        raise ConfigError(f"--format {fmt} writes a {_SUFFIX[fmt]} file but the output is named {out.name}; "
                          f"name it {out.with_suffix(_SUFFIX[fmt]).name} or pass --format {by_suffix}")
    return fmt


def _example_and_batches(net, input_shape: str | None, sample: str | None):
    """(example batch of 1 for the file's static shapes, verification batches) from a shape or a data file."""
    import numpy as np
    import torch

    from compress.io import Dataset, check_fits, load_data, match_model_dtype

    if sample is not None:
        data = match_model_dtype(net, load_data(sample))
        check_fits(net, data)
        # Every input (in forward's order, bound by match_model_dtype): one example tuple, one batch tuple.
        return data.example(1), [tuple(a[:VERIFY_SAMPLES] for a in data.arrays)]
    shape = parse_shape(input_shape)
    # The batches, the exporter's trace and the runtime's session all hold inputs: check before allocating.
    check_shape_memory(net, input_shape, shape, copies=VERIFY_BATCHES + 2)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(shape, dtype=np.float32) for _ in range(VERIFY_BATCHES)]
    try:
        check_fits(net, Dataset(batches[0], None, source=f"--input-shape {input_shape}"))
    except DataError as exc:
        if exc.__cause__ is None or is_out_of_memory(exc.__cause__):
            raise
        raise shape_error(net, input_shape, shape, str(exc.__cause__)) from exc
    return (torch.from_numpy(batches[0]),), batches


def _export(fmt: str, net, example, path: Path, opset: int | None):
    if fmt == "onnx":
        from compress.exporters.onnx import OnnxExportConfig, export_onnx

        config = OnnxExportConfig() if opset is None else OnnxExportConfig(opset=opset)
        return export_onnx(net, example, path, config)
    from compress.exporters.tflite import export_tflite

    return export_tflite(net, example, path)


def _verify(fmt: str, path: Path, net, batches, info):
    if fmt == "onnx":
        from compress.exporters.onnx import verify_onnx

        return verify_onnx(path, net, batches, info=info, strict=True)
    from compress.exporters.tflite.verify import verify_tflite

    return verify_tflite(path, net, batches, info=info, strict=True)


@click.command("export")
@click.argument("model", metavar="MODEL")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES, case_sensitive=False), default=None,
              help="File format [default: from the -o suffix, .onnx or .tflite].")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The file to write (model.onnx / model.tflite). Must not exist unless --force.")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="Builds the model a state dict is loaded into, e.g. compress.models:DemoCNN or nets.py:build.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a fully pickled model. Unpickling runs code from the file: trusted files only.")
@click.option("--input-shape", metavar="N,C,H,W", help="The input shape; random inputs verify the file.")
@click.option("--sample", metavar="DATA", help="Real inputs (.npz with x, or MODULE:CALLABLE) instead of a shape.")
@click.option("--opset", type=click.IntRange(min=13), default=None, help="ONNX opset [default: 17].")
@click.option("--force", is_flag=True, help="Replace FILE if it exists (only after the new file has passed).")
@debug_option
@handle_errors
def export_command(model: str, fmt: str | None, out: Path, arch: str | None, trust_pickle: bool,
                   input_shape: str | None, sample: str | None, opset: int | None, force: bool) -> None:
    """Export MODEL in float32 to ONNX or TFLite and verify the file in its runtime against torch.

    MODEL is a state dict (.pt/.pth/.safetensors, with --arch), a torch.export program (.pt2), or a pickled
    module (.pt, only with --trust-pickle). The input comes from --input-shape or --sample.
    """
    fmt = _resolve_format(fmt, out)
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset applies to ONNX only; drop it for --format {fmt}")
    if (input_shape is None) == (sample is None):
        raise ConfigError("export needs the model's input: pass --input-shape 1,3,224,224 or --sample DATA "
                          "(one of them)")
    check_output_file(out, inputs=[Path(model), *_spec_files(sample), *_spec_files(arch)], force=force)

    from compress.io import load_model

    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    example, batches = _example_and_batches(net, input_shape, sample)

    from compress.io.atomic import staged_file

    with staged_file(out) as tmp:
        start = time.perf_counter()
        with quiet_library():
            info = _export(fmt, net, example, tmp, opset)
        seconds = time.perf_counter() - start
        report = _verify(fmt, tmp, net, batches, info)

    quantized = bool(getattr(info, "quantized", False)) or any(getattr(info, "output_scales", []) or [])
    ops = getattr(info, "op_counts", None) or getattr(info, "op_histogram", {})
    samples = sum(len(b[0] if isinstance(b, tuple) else b) for b in batches)
    detail = f"opset {info.opset}, " if fmt == "onnx" else ""
    stdout_console().print(
        f"wrote {out} ({fmt} {'int8' if quantized else 'fp32'}, {detail}{out.stat().st_size / 1024:.1f} kB, "
        f"{sum(ops.values())} ops) in {seconds:.2f} s; {_RUNTIME[fmt]} vs torch on {samples} inputs: "
        f"max rel err {report.max_rel_diff:.1e}", highlight=False, soft_wrap=True)

