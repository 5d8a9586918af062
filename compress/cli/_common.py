"""What every command shares: one-line errors, exit codes, and writing an output directory all-or-nothing.

Error policy (the only place it is implemented):

* :class:`~compress.errors.CompressError` → ``error: <message>`` in red on one line on stderr, exit with the
  error's ``exit_code``;
* a usage error (unknown option, bad ``--observer`` value, missing argument) → one line, exit 2;
* running out of memory, and permission / read-only / disk-full errors on a path, are the machine's limits,
  not bugs: one line naming the path or the size and the fix (exit 10, or 2 for a path to choose again);
* Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129 (128 + the signal), after the staging is removed;
* anything else is a bug in compress → ``internal error: ...`` on one line, exit 70 (EX_SOFTWARE);
* ``--debug`` prints the full traceback too, and keeps the exit code.

Outputs (directories and single files) are built under a hidden staging name next to the target by
:mod:`compress.io.atomic` and renamed into place only after everything was written, so a failure, Ctrl-C or
SIGTERM never leaves a half-written output, and ``--force`` replaces an old output only once the new one is
complete; staging left by a process killed with SIGKILL is removed by the next run writing beside it. No
command overwrites one of its inputs, or an existing file without ``--force``. Every output directory holds a
``.compress-output`` marker; ``--force`` refuses to delete a non-empty directory without it (so
``-o ~ --force`` cannot wipe a home directory).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from compress.cli._shapes import parse_shape  # noqa: F401  (re-exported: inspect imports it from here)
from compress.errors import CompressError, ConfigError, ResourceError
from compress.io.atomic import os_error, staged_dir

MARKER = ".compress-output"
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
# SIGTERM (kill, systemd, CI timeouts) and SIGHUP (terminal closed) exit 128 + the signal, after cleanup.
_CAUGHT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def echo_error(line: str) -> None:
    """Print one red line on stderr (colour is dropped when stderr is not a terminal)."""
    click.echo(click.style(_one_line(line), fg="red"), err=True)


def echo_warnings(warnings_: Iterable[str]) -> None:
    """Print each warning as one yellow ``warning: ...`` line on stderr (a result that worked, but is suspect)."""
    for text in warnings_:
        click.echo(click.style(f"warning: {_one_line(text)}", fg="yellow"), err=True)


def check_labels(dataset, outputs, option: str) -> None:
    """Refuse labels outside the model's classes: accuracy against them is 0% and says nothing.

    Args:
        dataset: a :class:`compress.io.Dataset` (labels ``y`` may be None).
        outputs: the model's output on a few samples (``check_fits`` returns it): ``[N, classes]``.
        option: the option that named the data, for the message.

    Example:
        >>> import numpy as np, torch
        >>> from compress.io import Dataset
        >>> check_labels(Dataset(np.zeros((2, 3)), np.array([0, 12])), torch.zeros(2, 10), "--eval")
        Traceback (most recent call last):
        ...
        compress.errors.DataError: --eval labels y range 0..12 but the model has 10 outputs (classes 0..9); pass labels of this model's classes (0-based class indices)
    """
    import numpy as np

    from compress.errors import DataError

    y = getattr(dataset, "y", None)
    shape = tuple(getattr(outputs, "shape", ()))
    if y is None or len(shape) != 2 or shape[1] < 2 or not np.issubdtype(np.asarray(y).dtype, np.integer):
        return
    lo, hi, classes = int(np.min(y)), int(np.max(y)), shape[1]
    if lo < 0 or hi >= classes:
        raise DataError(f"{option} labels y range {lo}..{hi} but the model has {classes} outputs (classes "
                        f"0..{classes - 1}); pass labels of this model's classes (0-based class indices)")


def debug_option(fn: Callable) -> Callable:
    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(fn)


class Terminated(BaseException):
    """SIGTERM / SIGHUP arrived: unwinds like Ctrl-C so every staging directory's cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """While a command runs, turn SIGTERM / SIGHUP into :class:`Terminated` (Python's default: die at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in _CAUGHT_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, _raise_terminated)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_OOM_MARKERS = ("can't allocate memory", "out of memory", "not enough memory", "failed to allocate", "bad_alloc")


def is_out_of_memory(exc: BaseException | None) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MARKERS)


def classify_error(exc: BaseException) -> tuple[str, int]:
    """The one line the CLI prints for ``exc`` and the exit code (see the module docstring).

    Example:
        >>> classify_error(ConfigError("bits must be 2..8; pass --bits 8"))
        ('error: bits must be 2..8; pass --bits 8', 2)
        >>> classify_error(MemoryError())[1]
        10
    """
    if isinstance(exc, CompressError) and not is_out_of_memory(exc.__cause__):
        return f"error: {exc}", exc.exit_code
    if isinstance(exc, Terminated):
        return f"error: stopped by {signal.Signals(exc.signum).name}; nothing was written", 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return "error: interrupted; nothing was written", EXIT_INTERRUPTED
    if is_out_of_memory(exc) or is_out_of_memory(exc.__cause__):
        # A shape check that ran out of memory is not a wrong shape: blame the size, not the data's layout.
        detail = _one_line(exc.__cause__ if isinstance(exc, CompressError) else exc)[:160]
        err = ResourceError(f"out of memory{f' ({detail})' if detail else ''}; use a smaller --input-shape, "
                            "--batch-size or data set, or a machine with more memory")
        return f"error: {err}", err.exit_code
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS and exc.filename:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):  # only ever from writing
            err = os_error(exc, exc.filename)
            return f"error: {err}", err.exit_code
        # Reading or writing, we cannot tell here: name the path and its cause, not a guess.
        return (f"error: cannot access {exc.filename}: {(exc.strerror or 'permission denied').lower()}; check its "
                "permissions or choose another path"), ConfigError.exit_code
    return f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", EXIT_INTERNAL


_held_output: list[str] = []  # what quiet_library() held back from a call that failed (shown with --debug)


@contextmanager
def quiet_library() -> Iterator[None]:
    """Hold back what a library prints during a call, at the file-descriptor level.

    torch.onnx prints its whole TorchScript IR graph to fd 2 from C++ when an op cannot be exported, before
    our one-line error; Python-level redirection does not catch that. The text is discarded on success and
    kept for ``--debug`` on failure.
    """
    import tempfile

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as sink:
        saved: list[tuple[int, int]] = []
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            except OSError:  # no such descriptor (embedded use): nothing to hold back there
                continue
        held = io.StringIO()
        try:
            with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
                yield
        except BaseException:
            sink.seek(0)
            _held_output.append(sink.read().decode("utf-8", "replace") + held.getvalue())
            raise
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def handle_errors(fn: Callable) -> Callable:
    """Decorate a command callback that takes a ``debug`` flag: turn exceptions into one line + exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        _held_output.clear()
        try:
            with warnings.catch_warnings(), _signals_unwind():
                if not debug:
                    # Library deprecation chatter (torch.onnx, onnxscript) is not actionable for a CLI user.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:  # KeyboardInterrupt and Terminated included: they get a line and a code
            line, code = classify_error(exc)
            if debug:
                for text in _held_output:
                    sys.stderr.write(text)
                traceback.print_exc()  # --debug adds the traceback; the exit code stays the documented one
            echo_error(line)
            raise SystemExit(code) from None

    return wrapper


class CompressGroup(click.Group):
    """A click group whose usage errors are one line too (click prints usage + a blank line + the error)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D102
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except no_args_is_help as exc:  # `compress` alone: show the help, not an error
            click.echo(exc.ctx.get_help())
            raise SystemExit(0) from None
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            echo_error(f"error: {exc.format_message()}{where}")
            raise SystemExit(exc.exit_code) from None
        except click.ClickException as exc:
            exc.show()
            raise SystemExit(exc.exit_code) from None
        except click.exceptions.Abort:
            echo_error("error: aborted")
            raise SystemExit(1) from None
        raise SystemExit(rv if isinstance(rv, int) else 0)


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def check_output_dir(out: Path, *, inputs: Iterable[Path], force: bool, replaceable_kind: str | None = None) -> None:
    """Refuse output paths that are an input, contain an input, or exist (without ``--force``).

    Args:
        out: the requested output directory.
        inputs: files the command reads (model, data); only existing ones are checked.
        force: ``--force`` was given: an existing compress output directory may be replaced.
        replaceable_kind: an existing output whose marker says it was written by ``compress <kind>`` is
            replaced without ``--force`` (the demo's own ``demo-out``).

    Raises:
        ConfigError: naming the conflict and the fix.
    """
    target = out.resolve()
    for inp in inputs:
        if not inp.exists():
            continue
        src = inp.resolve()
        if target == src:
            raise ConfigError(f"output {out} is the input file {inp}; choose another directory with -o")
        if target in src.parents:
            raise ConfigError(
                f"output directory {out} contains the input {inp} and would replace it; choose another -o"
            )
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ConfigError(f"output {out} is the current directory or one of its parents; choose a new directory")
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_dir():
        raise ConfigError(f"output {out} exists and is a file, not a directory; remove it or choose another -o")
    marker = _read_marker(out)
    ours = marker is not None
    if replaceable_kind is not None and ours and marker.get("written_by") == f"compress {replaceable_kind}":
        return
    if not force:
        raise ConfigError(f"output directory {out} already exists; pass --force to replace it or choose another -o")
    if not ours and any(out.iterdir()):
        raise ConfigError(
            f"output directory {out} was not written by compress (no {MARKER} file), so --force will not delete "
            "it; remove it yourself or choose another -o"
        )


def check_output_file(out: Path, *, inputs: Iterable[Path], force: bool, option: str = "-o",
                      example: str = "model.onnx") -> None:
    """Refuse an output file that is an input, a directory, or exists (without ``--force``).

    Args:
        out: the file to write.
        inputs: files the command reads; only existing ones are checked.
        force: ``--force`` was given: an existing file (not an input) may be replaced.
        option: the option that named ``out``, for the message.
        example: a file name to suggest when ``out`` is a directory.

    Raises:
        ConfigError: naming the conflict and the fix.
    """
    target = out.resolve()
    for inp in inputs:
        if inp.exists() and inp.resolve() == target:
            raise ConfigError(f"{option} {out} is the input file {inp} and would overwrite it; choose another "
                              f"{option}")
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a directory; pass a file name such as {out / example}")
    parent = out.absolute().parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{option} {out}: {p} is a file, not a directory; choose another {option}")
            break
    if (out.exists() or out.is_symlink()) and not force:
        raise ConfigError(f"{option} {out} already exists; pass --force to replace it or choose another {option}")


@contextmanager
def staged_output(out: Path, *, kind: str) -> Iterator[Path]:
    """Yield an empty staging directory next to ``out``; on success it replaces ``out`` in one rename.

    On any exception (Ctrl-C and SIGTERM included) the staging directory and any parent directories created
    for it are removed and ``out`` is left as it was (:func:`compress.io.atomic.staged_dir`); the finished
    output gets the ``.compress-output`` marker.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "result"
        >>> with staged_output(out, kind="test") as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> sorted(p.name for p in out.iterdir())
        ['.compress-output', 'a.txt']
    """
    def mark(tmp: Path) -> None:
        (tmp / MARKER).write_text(json.dumps({"written_by": f"compress {kind}", "version": _version()}) + "\n")

    with staged_dir(out, before_commit=mark) as tmp:
        yield tmp


def rebase_paths(obj: Any, old: Path, new: Path) -> Any:
    """Replace the staging directory in every string of a report by the final output directory."""
    if isinstance(obj, dict):
        return {k: rebase_paths(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rebase_paths(v, old, new) for v in obj]
    if isinstance(obj, str):
        for src in {str(old), str(old.resolve())}:
            if src in obj:
                obj = obj.replace(src, str(new))
        return obj
    return obj


def finish_report(report: dict, staging: Path, out: Path) -> dict:
    """Point the report's artifact paths at ``out`` (in the returned dict and in ``staging/report.json``)."""
    final = out.resolve()
    report = rebase_paths(report, staging, final)
    path = staging / "report.json"
    if path.exists():
        try:
            on_disk = json.loads(path.read_text())
        except ValueError:
            return report
        path.write_text(json.dumps(rebase_paths(on_disk, staging, final), indent=2) + "\n")
    return report


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-compress")
    except PackageNotFoundError:
        return "0+unknown"


def stdout_console():
    """The console commands print results on.

    On a terminal rich uses its width. Piped to a file or a program, rich would assume 80 columns and wrap
    tables and split names; there the width is unlimited (``COLUMNS`` still wins when set), so every row
    stays one line a script can read.
    """
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPE_WIDTH)


PIPE_WIDTH = 1000


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal: in logs and pipes they are noise."""
    return sys.stderr.isatty()

