"""The ``compress`` command line: a thin layer over the library (parse → options → library call → print).

One module per command; error handling and output-directory rules live in :mod:`compress.cli._common`.
``main`` is the console-script entry point declared in pyproject.toml.
"""

from __future__ import annotations

import click

from compress.cli._common import CompressGroup, _version
from compress.cli.bench import bench_command
from compress.cli.demo import demo_command
from compress.cli.distill import distill_command
from compress.cli.export import export_command
from compress.cli.inspect import inspect_command
from compress.cli.prune import prune_command
from compress.cli.quantize import quantize_command

__all__ = ["main"]


@click.group("compress", cls=CompressGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="compress", message="%(prog)s %(version)s")
def main() -> None:
    """Compress PyTorch models for edge deployment: int8 quantization, verified ONNX and TFLite export.

    Start with `compress demo`; quantize your own model with `compress quantize MODEL --calib DATA -o OUT`;
    write a float file with `compress export MODEL --input-shape 1,3,224,224 -o model.tflite`.
    """


main.add_command(quantize_command)
main.add_command(export_command)
main.add_command(inspect_command)
main.add_command(demo_command)
main.add_command(bench_command)
main.add_command(prune_command)
main.add_command(distill_command)
