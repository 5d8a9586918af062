"""Resolve ``MODULE:CALLABLE`` specs (``--arch``, data loaders) to Python callables.

Accepted forms:

* ``package.module:name`` — imported with the normal import system; when the top-level package is not
  importable, the current directory is tried too (``python -m`` puts it on ``sys.path``, console scripts do not).
* ``path/to/file.py:name`` — the file is executed as a fresh module (its directory is put on ``sys.path`` while
  it imports, so it can import its neighbours).
* ``...:name(key=literal, ...)`` — keyword arguments with Python literal values, for constructors that need
  them (``compress.models:DemoCNN(width=8)``). Only literals are accepted: the spec is parsed, never evaluated.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CallableSpec:
    """A parsed ``MODULE:CALLABLE[(kwargs)]`` spec."""

    module: str
    attr: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return self.module.endswith(".py")


class SpecError(Exception):
    """Internal: a spec cannot be parsed or resolved. Callers turn it into their own CompressError subclass."""


def looks_like_callable_spec(spec: str) -> bool:
    """True when ``spec`` has the ``MODULE:CALLABLE`` shape (and is not, e.g., a Windows drive path)."""
    if ":" not in spec:
        return False
    module, _, attr = spec.rpartition(":")
    if len(module) == 1 and module.isalpha():  # C:\data.npz
        return False
    return bool(module) and bool(attr) and not attr.startswith(("\\", "/"))


def parse_callable_spec(spec: str) -> CallableSpec:
    """Split ``MODULE:NAME`` or ``MODULE:NAME(k=v, ...)``; raises SpecError with the accepted forms."""
    if not looks_like_callable_spec(spec):
        raise SpecError(f"{spec!r} is not of the form MODULE:CALLABLE (e.g. mypkg.nets:build or nets.py:build)")
    # The attribute part may contain a call with arguments, whose literals can contain ':' themselves.
    head, paren, _ = spec.partition("(")
    module, _, name = head.rpartition(":")
    call_src = name + paren + spec[len(head) + len(paren):]
    try:
        expr = ast.parse(call_src.strip(), mode="eval").body
    except SyntaxError:
        raise SpecError(f"cannot parse {call_src!r} in {spec!r}; write NAME or NAME(key=value, ...)") from None
    kwargs: dict[str, Any] = {}
    if isinstance(expr, ast.Call):
        if expr.args:
            raise SpecError(f"{spec!r}: pass constructor arguments by keyword, e.g. NAME(num_classes=10)")
        for kw in expr.keywords:
            if kw.arg is None:
                raise SpecError(f"{spec!r}: **kwargs are not supported; write key=value pairs")
            try:
                kwargs[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise SpecError(
                    f"{spec!r}: argument {kw.arg} must be a Python literal (number, string, tuple, ...)"
                ) from None
        expr = expr.func
    parts: list[str] = []
    while isinstance(expr, ast.Attribute):
        parts.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        raise SpecError(f"{spec!r}: the part after ':' must be a name like build or Net(width=8)")
    parts.append(expr.id)
    return CallableSpec(module=module.strip(), attr=".".join(reversed(parts)), kwargs=kwargs)


def _import_file(path: Path):
    if not path.is_file():
        raise SpecError(f"file {str(path)!r} not found; check the path before ':'")
    # A unique module name per file path, so two different files called nets.py do not collide.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"_compress_user_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot import {str(path)!r} as a Python module; is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses / pickling look the module up by name while it executes
    parent = str(path.resolve().parent)
    sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(mod_name, None)
        raise
    finally:
        try:
            sys.path.remove(parent)
        except ValueError:
            pass
    return module


def _import_module(name: str):
    def requested_is_missing(exc: ModuleNotFoundError) -> bool:
        # A module the user's module imports being missing is a different error: let it through unchanged.
        return exc.name is not None and (name == exc.name or name.startswith(exc.name + "."))

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if not requested_is_missing(exc):
            raise
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not requested_is_missing(exc):
                raise
        finally:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass
    raise SpecError(
        f"cannot import module {name!r}; check the name, install its package, or give a file path like "
        f"path/to/{name.rsplit('.', 1)[-1]}.py:NAME"
    )


def resolve_callable(spec: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """Import the callable named by ``spec``; returns it and the keyword arguments given in the spec.

    Raises SpecError for unparsable specs, missing files/modules/attributes. Exceptions raised by the user's
    module while it is imported propagate unchanged (callers wrap them, keeping the cause for --debug).
    """
    parsed = parse_callable_spec(spec)
    module = _import_file(Path(parsed.module)) if parsed.is_file else _import_module(parsed.module)
    obj: Any = module
    for part in parsed.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SpecError(
                f"{parsed.module!r} has no attribute {parsed.attr!r}; check the name after ':'"
            ) from None
    if not callable(obj):
        raise SpecError(f"{spec!r} names a {type(obj).__name__}, not a function or class")
    return obj, parsed.kwargs
