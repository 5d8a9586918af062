"""``compress demo``: train the bundled digits CNN, quantize it, print fp32 vs int8 per runtime (compress.demo)."""

from __future__ import annotations

from pathlib import Path

import click

from compress.cli._common import (
    check_output_dir,
    debug_option,
    echo_warnings,
    finish_report,
    handle_errors,
    progress_enabled,
    staged_output,
    stdout_console,
)

DEFAULT_OUT = Path("demo-out")


@click.command("demo")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Output directory; a previous demo output there is replaced.")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True, help="Float training epochs.")
@click.option("--qat", is_flag=True, help="Fine-tune with quantization-aware training instead of PTQ only.")
@click.option("--force", is_flag=True, help="Replace OUTDIR even if another compress command wrote it.")
@debug_option
@handle_errors
def demo_command(out: Path, epochs: int, qat: bool, force: bool) -> None:
    """Train a small CNN on the bundled 8×8 digits, quantize it to int8 ONNX and TFLite, compare with fp32."""
    check_output_dir(out, inputs=[], force=force, replaceable_kind="demo")

    from compress.demo import run_demo
    from compress.pipeline import render_summary

    with staged_output(out, kind="demo") as staging:
        report = run_demo(staging, epochs=epochs, qat=qat, progress=progress_enabled())
        report = finish_report(report, staging, out)

    console = stdout_console()
    console.print(render_summary(report))
    if report.get("pruned"):
        from compress.cli.prune import render_demo_rows

        console.print(render_demo_rows(report["pruned"], report["formats"]["onnx"]))
    if report.get("distilled"):
        from compress.cli.distill import render_demo_rows as distilled_rows

        console.print(distilled_rows(report["distilled"]))
    echo_warnings(report.get("warnings", []))
    demo = report.get("demo", {})
    if demo:
        console.print(
            f"trained {demo['epochs']} epoch{'s' if demo['epochs'] != 1 else ''} on {demo['train_samples']} digits in {demo['train_seconds']:.1f} s; "
            f"torch fp32 test accuracy {100 * demo['fp32_torch_accuracy']:.2f}% on {demo['test_samples']}",
            highlight=False, soft_wrap=True,
        )
    console.print(
        f"wrote {out}/ — try: compress quantize {out}/demo_cnn.pt --arch {demo.get('arch', 'compress.models:DemoCNN')} "
        f"--calib {out}/calib.npz --eval {out}/test.npz -o my-out",
        highlight=False, soft_wrap=True,
    )
