"""What every command shares: one-line errors, exit codes, and writing an output directory all-or-nothing.

Error policy (the only place it is implemented):

* :class:`~compress.errors.CompressError` → ``error: <message>`` in red on one line on stderr, exit with the
  error's ``exit_code``;
* a usage error (unknown option, bad ``--observer`` value, missing argument) → one line, exit 2;
* anything else is a bug in compress → ``internal error: ...`` on one line, exit 70 (EX_SOFTWARE);
* ``--debug`` re-raises instead, so Python prints the full traceback.

Output directories are built in a hidden temporary directory next to the target and renamed into place only
after everything was written, so a failure or Ctrl-C never leaves a half-written output, and ``--force``
replaces an old output only once the new one is complete. Every output holds a ``.compress-output`` marker;
``--force`` refuses to delete a non-empty directory without it (so ``-o ~ --force`` cannot wipe a home directory).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from compress.errors import CompressError, ConfigError

MARKER = ".compress-output"
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def echo_error(line: str) -> None:
    """Print one red line on stderr (colour is dropped when stderr is not a terminal)."""
    click.echo(click.style(_one_line(line), fg="red"), err=True)


def debug_option(fn: Callable) -> Callable:
    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(fn)


def handle_errors(fn: Callable) -> Callable:
    """Decorate a command callback that takes a ``debug`` flag: turn exceptions into one line + exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                if not debug:
                    # Library deprecation chatter (torch.onnx, onnxscript) is not actionable for a CLI user.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CompressError as exc:
            if debug:
                raise
            echo_error(f"error: {exc}")
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                raise
            echo_error("error: interrupted; nothing was written")
            raise SystemExit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if debug:
                raise
            echo_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            raise SystemExit(EXIT_INTERNAL) from None

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


@contextmanager
def staged_output(out: Path, *, kind: str) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out``; on success it replaces ``out`` in one rename.

    On any exception (Ctrl-C included) the temporary directory and any parent directories created for it are
    removed and ``out`` is left as it was.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "result"
        >>> with staged_output(out, kind="test") as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> sorted(p.name for p in out.iterdir())
        ['.compress-output', 'a.txt']
    """
    created: list[Path] = []
    parent = out.absolute().parent
    for p in [parent, *parent.parents][::-1]:
        if not p.exists():
            try:
                p.mkdir()
            except OSError as exc:
                raise ConfigError(f"cannot create directory {p} ({exc.strerror}); choose another -o") from exc
            created.append(p)
        elif not p.is_dir():
            raise ConfigError(f"{p} is a file, so {out} cannot be created there; choose another -o")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot write to {parent} ({exc.strerror}); choose another -o") from exc
    try:
        yield tmp
        _apply_umask(tmp)
        (tmp / MARKER).write_text(json.dumps({"written_by": f"compress {kind}", "version": _version()}) + "\n")
        if out.exists() or out.is_symlink():
            old = parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):
            try:
                p.rmdir()
            except OSError:
                pass
        raise


def _apply_umask(root: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the output the permissions a mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


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
    from rich.console import Console

    return Console()


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal: in logs and pipes they are noise."""
    return sys.stderr.isatty()


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) → ``(1, 3, 224, 224)``; anything else is a ConfigError."""
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape {text!r} is not a shape; write positive sizes like 1,3,224,224")
    return shape
