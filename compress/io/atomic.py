"""Writing outputs all-or-nothing: the one home of temporary-file-then-rename and of staging directories.

Every output ``compress`` writes is built under a hidden staging name beside its destination and renamed into
place only once it is complete, so a failure, Ctrl-C or SIGTERM never leaves a half-written file and an
existing file is replaced in one step. Staging names carry the writer's process id::

    .model.onnx.partial-<pid>-<8 hex>     (a staging directory: the file, and any temporary file of the writer)
    .out.old-<pid>-<8 hex>                (an output being replaced, for the instant of the swap)

A process killed with SIGKILL cannot clean up after itself, so every later run calls
:func:`clean_stale_staging` on its output's directory: entries of this form whose process is gone are
removed. Entries of a living process (another run in progress) are left alone.

Operating-system errors while creating outputs are turned into :class:`~compress.errors.CompressError` by
:func:`os_error`, naming the path, the cause (permission, read-only file system, disk full) and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compress.errors import CompressError, ConfigError, ResourceError

# `.NAME.partial-PID-HEX[suffix]` / `.NAME.old-PID-HEX`: NAME may itself contain dots and dashes.
_STAGING_RE = re.compile(r"^\..+\.(?:partial|old)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")
_PERMISSION = {errno.EACCES, errno.EPERM}
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def staging_name(name: str, kind: str = "partial") -> str:
    """The hidden name of a staging entry for ``name`` owned by this process.

    Example:
        >>> bool(_STAGING_RE.match(staging_name("model.onnx")))
        True
    """
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def os_error(exc: OSError, path: Path | str, option: str = "-o") -> CompressError:
    """The user-facing error for an OSError while writing ``path``: what went wrong and what to do.

    Example:
        >>> str(os_error(OSError(errno.EROFS, "Read-only file system"), "/mnt/x.onnx"))
        'cannot write /mnt/x.onnx: the file system is read-only; choose another -o on a writable disk'
    """
    where = f"cannot write {path}"
    if exc.errno in _NO_SPACE:
        return ResourceError(f"{where}: no space left on the device; free some space or choose another {option}")
    if exc.errno == errno.EROFS:
        return ConfigError(f"{where}: the file system is read-only; choose another {option} on a writable disk")
    if exc.errno in _PERMISSION:
        return ConfigError(f"{where}: permission denied; choose another {option} in a directory you can write to")
    reason = exc.strerror or type(exc).__name__
    return ConfigError(f"{where} ({reason}); choose another {option}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def clean_stale_staging(directory: Path | str) -> list[Path]:
    """Remove staging entries in ``directory`` left by processes that no longer exist; return what was removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / ".out.partial-999999999-0123abcd").mkdir()
        >>> [p.name for p in clean_stale_staging(d)]
        ['.out.partial-999999999-0123abcd']
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING_RE.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:  # someone else's file we cannot remove: not ours to force
            continue
        removed.append(entry)
    return removed


def _make_parents(parent: Path, option: str) -> list[Path]:
    """Create the missing directories above an output; return them (outermost first) for undoing."""
    created: list[Path] = []
    for p in [*reversed(parent.parents), parent]:
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{p} is a file, so nothing can be written inside it; choose another {option}")
            continue
        try:
            p.mkdir()
        except OSError as exc:
            _remove_dirs(created)
            raise os_error(exc, p, option) from exc
        created.append(p)
    return created


def _remove_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give staged entries the permissions a plain ``mkdir`` / ``open`` would (staging is created private)."""
    mask = _umask()
    if root.is_dir():
        root.chmod(0o777 & ~mask)
        for path in root.rglob("*"):
            if not path.is_symlink():
                path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    else:
        root.chmod(0o666 & ~mask)


@contextmanager
def _staging(out: Path, option: str) -> Iterator[tuple[Path, Path]]:
    """(private staging directory beside ``out``, ``out``'s directory); both undone on failure.

    The staging directory is removed on exit in every case (whatever was committed has been renamed out of
    it); on failure the parent directories created for ``out`` are removed too.
    """
    parent = out.absolute().parent
    created = _make_parents(parent, option)
    tmp = parent / staging_name(out.name)
    # mkdir inside the try: a SIGTERM arriving right after it must still remove the directory.
    try:
        clean_stale_staging(parent)
        try:
            tmp.mkdir(mode=0o700)
        except OSError as exc:
            raise os_error(exc, out, option) from exc
        yield tmp, parent
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_dirs(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_dir(out: Path | str, *, option: str = "-o",
               before_commit: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield an empty private staging directory beside ``out``; on success it replaces ``out`` in one rename.

    On any exception (KeyboardInterrupt and SIGTERM included) the staging directory and the parent
    directories created for it are removed and ``out`` is left as it was. Stale staging of dead processes in
    the same directory is removed first.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "result"
        >>> with staged_dir(out) as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> [p.name for p in out.parent.iterdir()], [p.name for p in out.iterdir()]
        (['result'], ['a.txt'])
    """
    out = Path(out)
    with _staging(out, option) as (tmp, parent):
        yield tmp
        if before_commit is not None:
            before_commit(tmp)
        apply_umask(tmp)
        _swap_into_place(tmp, out, parent)


def _swap_into_place(src: Path, out: Path, parent: Path) -> None:
    try:
        if not (out.exists() or out.is_symlink()) or not (src.is_dir() or out.is_dir()):
            os.replace(src, out)  # a new name, or a file replacing a file: one atomic step
            return
        # rename() cannot replace a non-empty directory: move the old one aside, then drop it.
        old = parent / staging_name(out.name, "old")
        os.replace(out, old)
        try:
            os.replace(src, out)
        except BaseException:
            os.replace(old, out)
            raise
    except OSError as exc:
        raise os_error(exc, out) from exc
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


@contextmanager
def staged_file(out: Path | str, *, option: str = "-o") -> Iterator[Path]:
    """Yield a path to write ``out``'s content to; on success it is renamed onto ``out`` in one step.

    The path lies inside a private staging directory, so temporary files of whatever writes it (exporters,
    matplotlib) are cleaned up with it. It has ``out``'s name, so writers that check the suffix see it.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "r.json"
        >>> with staged_file(out) as tmp:
        ...     _ = tmp.write_text("{}")
        >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
        ('{}', ['r.json'])
    """
    out = Path(out)
    with _staging(out, option) as (tmp_dir, parent):
        target = tmp_dir / out.name
        yield target
        if not target.is_file():
            raise FileNotFoundError(f"nothing was written to {target}")
        apply_umask(target)
        _swap_into_place(target, out, parent)


def write_bytes_atomic(path: Path | str, data: bytes, *, option: str = "-o") -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename (never a half-written file).

    Example:
        >>> import tempfile
        >>> p = write_bytes_atomic(Path(tempfile.mkdtemp()) / "x.bin", b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    path = Path(path)
    with staged_file(path, option=option) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise os_error(exc, path, option) from exc
    return path


def write_text_atomic(path: Path | str, text: str, *, option: str = "-o") -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"), option=option)


def write_json_atomic(path: Path | str, obj, *, option: str = "-o") -> Path:
    """Indented JSON (UTF-8, trailing newline) written with :func:`write_bytes_atomic`.

    Example:
        >>> import tempfile
        >>> write_json_atomic(Path(tempfile.mkdtemp()) / "r.json", {"a": 1}).read_text()
        '{\\n  "a": 1\\n}\\n'
    """
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n", option=option)
