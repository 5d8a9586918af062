"""``compress bench ARTIFACT...``: latency, throughput, load time, peak memory, size and accuracy, measured fairly.

A thin layer over :func:`compress.runtime.bench.run_bench`: parse the options into a
:class:`~compress.runtime.bench.BenchConfig`, pick the executor (this machine, or a device over SSH), show a
progress bar, print the tables and write the requested files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from compress.cli._common import (
    check_output_file,
    debug_option,
    handle_errors,
    progress_enabled,
    stdout_console,
)
from compress.cli.quantize import _spec_files
from compress.errors import ConfigError


def parse_threads(text: str) -> tuple[int, ...]:
    """``"1,2"`` → ``(1, 2)``; every count must be an integer ≥ 1.

    Example:
        >>> parse_threads("1, 4")
        (1, 4)
    """
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            raise ConfigError(f"--threads {text!r}: {part!r} is not a whole number; e.g. --threads 1,2") from None
        if n < 1:
            raise ConfigError(f"--threads {text!r}: thread counts must be >= 1, got {n}; e.g. --threads 1,2")
        out.append(n)
    return tuple(dict.fromkeys(out))


def parse_input_shapes(values: tuple[str, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``("1,3,224,224",)`` or ``("ids:1,128", "mask:1,128")`` → ``((name, shape), ...)``; no name = first input.

    Example:
        >>> parse_input_shapes(("ids:1,128",))
        (('ids', (1, 128)),)
    """
    out = []
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise ConfigError(f"--input-shape {value!r} must be positive sizes like 1,3,224,224 (or NAME:1,128 for "
                              "one input of several)")
        out.append((name.strip() if sep else "", shape))
    return tuple(out)


def _check_outputs(outputs: dict[str, Path | None], *, inputs: list[Path], force: bool) -> None:
    """Every output path: not an input, not another output, not an existing file (without --force)."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_output_file(path, inputs=inputs, force=force, option=option, example=f"bench{_SUFFIXES[option]}")
        target = path.resolve()
        if target in seen:
            raise ConfigError(f"{seen[target]} and {option} both name {path}; give each its own file")
        seen[target] = option
    plot = outputs.get("--plot")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise ConfigError(f"--plot writes PNG; name the file {plot.with_suffix('.png').name}")
        from compress.errors import require

        require("matplotlib", "plot")  # before measuring, not after minutes of it


_SUFFIXES = {"--json": ".json", "--markdown": ".md", "--plot": ".png"}


@contextlib.contextmanager
def _progress_bar(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("measuring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        yield update


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT...")
@click.option("--runtime", "runtimes", multiple=True, metavar="NAME[,NAME]",
              help="ort, litert, litert-noxnnpack, torch, torch-compile [default: by file type: .onnx ort, "
                   ".tflite litert, .pt2/.pt torch]. Each artifact runs in those of them that load it.")
@click.option("--threads", default="1", show_default=True, metavar="N[,N]", help="Thread counts to measure at.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per process first.")
@click.option("--runs", type=int, default=None, help="Timed runs per process [default: 50].")
@click.option("--seconds", type=float, default=None, help="Time each process this long instead of --runs.")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Alternated rounds: processes per contender (>= 3 for a noise estimate).")
@click.option("--batch", type=int, default=1, show_default=True, help="Items per run (dynamic batch dimension).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]N,C,H,W",
              help="Sizes for dimensions the file leaves dynamic (repeat with NAME: for several inputs).")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Builds the model a .pt/.pth state dict is loaded into.")
@click.option("--data", metavar="DATA.npz", help="Time on these inputs (x) and measure accuracy (y labels) and "
                                                   "top-1 agreement with the first artifact.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full report as JSON.")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write the table as Markdown.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG plot (needs matplotlib).")
@click.option("--pin", is_flag=True, help="Pin each measured process to as many cores as it has threads (Linux).")
@click.option("--device", metavar="ssh://[USER@]HOST[:PORT]",
              help="Measure on a remote device over SSH (honours ~/.ssh/config aliases, ports, keys).")
@click.option("--remote-python", default="python3", show_default=True, metavar="PATH",
              help="Python on the device (needs numpy and the runtime).")
@click.option("--force", is_flag=True, help="Replace existing --json / --markdown / --plot files.")
@click.option("--ssh-config", type=click.Path(path_type=Path), metavar="FILE",
              help="An ssh config file to use instead of ~/.ssh/config (ssh -F).")
@debug_option
@handle_errors
def bench_command(artifacts: tuple[str, ...], runtimes: tuple[str, ...], threads: str, warmup: int,
                  runs: int | None, seconds: float | None, rounds: int, batch: int, input_shapes: tuple[str, ...],
                  arch: str | None, data: str | None, json_path: Path | None, markdown: Path | None,
                  plot: Path | None, pin: bool, device: str | None, remote_python: str,
                  ssh_config: Path | None, force: bool) -> None:
    """Benchmark ONNX, TFLite and PyTorch model files side by side.

    Every measurement is a fresh process with one session; contenders alternate round by round, and ratios
    against the first ARTIFACT are paired within rounds with their noise printed beside them.
    """
    from compress.runtime.bench import BenchConfig, run_bench
    from compress.runtime.report import render_tables, write_json, write_markdown
    from compress.runtime.runners import parse_runtimes

    if runs is not None and seconds is not None:
        raise ConfigError("pass --runs or --seconds, not both")
    config = BenchConfig(
        runtimes=parse_runtimes(runtimes or None), threads=parse_threads(threads), warmup=warmup,
        runs=50 if runs is None else runs, seconds=seconds, rounds=rounds, batch=batch,
        input_shapes=parse_input_shapes(input_shapes), data=data, pin=pin, arch=arch)
    if device is None and (ssh_config is not None or remote_python != "python3"):
        raise ConfigError("--ssh-config and --remote-python apply to --device ssh://...; add --device or drop them")
    inputs = [Path(a) for a in artifacts] + _spec_files(data) + _spec_files(arch)
    inputs += [Path(a).with_name(Path(a).name + ".data") for a in artifacts]  # ONNX external weights
    if ssh_config is not None:
        inputs.append(ssh_config)
    _check_outputs({"--json": json_path, "--markdown": markdown, "--plot": plot}, inputs=inputs, force=force)

    with contextlib.ExitStack() as stack:
        executor, where = None, None
        if device is not None:
            from compress.runtime.remote import RemoteConfig, RemoteDevice, parse_device

            target = parse_device(device)
            executor = stack.enter_context(RemoteDevice(target, RemoteConfig(
                python=remote_python, ssh_config=str(ssh_config) if ssh_config else None)))
            where = str(target)
        update = stack.enter_context(_progress_bar(progress_enabled()))
        report = run_bench(list(artifacts), config, executor=executor, device=where, progress=update)

    console = stdout_console()
    console.print(render_tables(report))
    written = []
    if json_path is not None:
        written.append(str(write_json(report, json_path)))
    if markdown is not None:
        written.append(str(write_markdown(report, markdown)))
    if plot is not None:
        from compress.runtime.plot import plot_report

        written.append(str(plot_report(report, plot)))
    if written:
        console.print(f"wrote {', '.join(written)}", highlight=False, soft_wrap=True)
