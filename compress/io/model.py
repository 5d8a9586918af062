"""Load a float PyTorch model from a file, safely by default.

Formats, by file suffix:

* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` holding a **state dict** (``torch.save(model.state_dict(), ...)``,
  or a checkpoint dict with one under ``state_dict`` / ``model`` / ``model_state_dict``) + ``arch``, a
  ``MODULE:CALLABLE`` that builds the empty model. Loaded with ``torch.load(weights_only=True)``: tensors only,
  no code runs.
* ``.safetensors`` + ``arch``.
* ``.pt2``: a ``torch.export`` program (``torch.export.save``); no ``arch`` needed.
* A fully pickled ``nn.Module`` (``torch.save(model, ...)``) only with ``trust_pickle=True``: unpickling
  imports and calls whatever the file names, i.e. it runs code from the file. Without the flag we refuse with
  :class:`~compress.errors.UnsafePickleError` and name the classes the file would load.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.capture import raise_exported_program
from compress.errors import ModelLoadError, UnsafePickleError
from compress.io._callables import SpecError, resolve_callable

__all__ = ["ExportedModule", "build_arch", "load_model"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
_ARCH_HINT = "pass --arch MODULE:CALLABLE that builds the model (e.g. --arch compress.models:DemoCNN)"


def _few(names: list[str], k: int = 4) -> str:
    shown = ", ".join(names[:k])
    return shown + (f" (+{len(names) - k} more)" if len(names) > k else "")


def build_arch(arch: str) -> nn.Module:
    """Build an (untrained) model from ``MODULE:CALLABLE``, ``file.py:CALLABLE`` or ``MODULE:Class(k=v)``.

    Args:
        arch: the spec; the callable is called with the literal keyword arguments given in the spec, if any.

    Returns:
        The ``nn.Module`` it returns.

    Example:
        >>> type(build_arch("compress.models:DemoCNN(width=8)")).__name__
        'DemoCNN'
    """
    try:
        fn, kwargs = resolve_callable(arch)
    except SpecError as exc:
        raise ModelLoadError(f"--arch {arch}: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"importing --arch {arch} failed: {type(exc).__name__}: {exc}; fix the module (rerun with --debug)"
        ) from exc
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"building --arch {arch} failed: {type(exc).__name__}: {exc}; it must build the model from keyword "
            "arguments only, e.g. --arch 'mod:Net(num_classes=10)'"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch {arch} returned a {type(model).__name__}, not a torch.nn.Module; return the model")
    return model


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = _few([str(k) for k in obj.keys()])
        raise ModelLoadError(
            f"{path.name} is a dict but holds no state dict (keys: {keys or 'none'}); save model.state_dict() "
            "or put it under 'state_dict'"
        )
    raise ModelLoadError(
        f"{path.name} holds a {type(obj).__name__}, not a model or state dict; save model.state_dict() and "
        "pass --arch, or torch.export a .pt2"
    )


def _strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` / ``_orig_mod.`` prefixes DataParallel/DDP and torch.compile add to every key."""
    for prefix in ("module.", "_orig_mod."):
        if not (set(state) & expected) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> nn.Module:
    expected = model.state_dict()
    state = _strip_wrapper_prefix(state, set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if wrong:
            parts.append(f"shape mismatch (file vs arch) {_few(wrong, 2)}")
        raise ModelLoadError(
            f"the weights in {path.name} do not fit --arch {arch}: {'; '.join(parts)}; pass the architecture "
            "(and constructor arguments) the weights were saved from"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"loading {path.name} into --arch {arch} failed: {first}; check the arch matches") from exc
    return model


def _unsafe_globals(path: Path, exc: BaseException) -> list[str] | None:
    """Classes/functions a pickle would import, or None when the file is not a pickle with globals at all."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if found:
            # The user's own classes first: they are what the message should name, not torch's containers.
            return sorted(found, key=lambda name: (name.startswith("torch."), name))
    except Exception:
        pass  # legacy (non-zip) format: fall back to what torch.load said
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found or None


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    corrupt = (
        f"{path.name} is not a readable PyTorch file (corrupt or truncated); re-save it with "
        "torch.save(model.state_dict(), path)"
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path, exc)
        if names is None:
            raise ModelLoadError(corrupt) from exc
        if not trust_pickle:
            raise UnsafePickleError(
                f"{path.name} is a pickled Python object (it would import {_few(names, 3)}); unpickling runs code "
                "from the file, so it is refused. Pass --trust-pickle only for files you trust, or save "
                "model.state_dict() and pass --arch"
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(corrupt) from exc
    # The user vouched for the file: a full unpickle, which may import and run code it names.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise ModelLoadError(
            f"{path.name} pickles a class that cannot be imported here ({exc}); make its module importable "
            "(it must be on PYTHONPATH), or save model.state_dict() and pass --arch"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"unpickling {path.name} failed: {type(exc).__name__}: {exc}; {corrupt}") from exc


class ExportedModule(nn.Module):
    """A ``torch.export`` program as an ordinary ``nn.Module``.

    ``ExportedProgram.module()`` refuses ``.train()`` / ``.eval()`` (the mode is fixed when exporting), which
    breaks every caller that routinely puts a model in eval mode. This wrapper accepts both and leaves the
    graph as exported. The graph holds aten-level ops (``torch.ops.aten.conv2d``), not ``nn.Conv2d`` modules.
    """

    def __init__(self, graph_module: nn.Module, source: str = ""):
        super().__init__()
        self.exported = graph_module
        self.source = source

    def forward(self, *args, **kwargs):
        return self.exported(*args, **kwargs)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode  # the exported graph keeps the mode it was exported in
        return self


def _load_pt2(path: Path) -> nn.Module:
    # torch.export.load logs a full traceback before re-raising on a bad file; our one-line error says it all.
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} is not a readable torch.export program ({type(exc).__name__}); re-save it with "
            "torch.export.save(torch.export.export(model, example_inputs), path)"
        ) from exc
    finally:
        export_log.setLevel(level)
    # aten ops → nn.Conv2d / nn.Linear / torch functions: the vocabulary prepare and the exporters read.
    return raise_exported_program(program, source=path.name)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{path.name} is not a readable safetensors file (corrupt or truncated); re-save it with "
            "safetensors.torch.save_file(model.state_dict(), path)"
        ) from exc


def load_model(path: str | Path, *, arch: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Load a float model for compression, in eval mode on the CPU.

    Args:
        path: ``.pt``/``.pth``/``.bin``/``.ckpt`` (state dict, or a pickled module with ``trust_pickle``),
            ``.safetensors``, or ``.pt2`` (``torch.export``).
        arch: ``MODULE:CALLABLE`` building the model a state dict is loaded into (see :func:`build_arch`).
        trust_pickle: allow unpickling a full ``nn.Module``. Unpickling runs code named by the file: use it
            only for files you trust.

    Returns:
        The ``nn.Module``.

    Raises:
        ModelLoadError: missing/corrupt file, unknown format, missing ``arch``, weights that do not fit it.
        UnsafePickleError: the file is a pickled object and ``trust_pickle`` is False.

    Example:
        >>> import tempfile, os
        >>> from compress.models import DemoCNN
        >>> p = os.path.join(tempfile.mkdtemp(), "m.pt")
        >>> torch.save(DemoCNN().state_dict(), p)
        >>> type(load_model(p, arch="compress.models:DemoCNN")).__name__
        'DemoCNN'
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} not found; check the path")
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a directory; pass a model file (.pt, .pth, .safetensors or .pt2)")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        model = _load_pt2(path)
    elif suffix in TORCH_SUFFIXES or suffix == ".safetensors":
        obj: Any = _load_safetensors(path) if suffix == ".safetensors" else _torch_load(path, trust_pickle)
        if isinstance(obj, nn.Module):
            model = obj
        else:
            state = _find_state_dict(obj, path)
            if arch is None:
                raise ModelLoadError(f"{path.name} holds only weights (a state dict); {_ARCH_HINT}")
            model = _apply_state_dict(build_arch(arch), state, path, arch)
    else:
        raise ModelLoadError(
            f"unknown model format {suffix or '(no suffix)'!r} for {path.name}; use .pt/.pth (state dict + --arch), "
            ".safetensors + --arch, or a torch.export .pt2"
        )
    return model.cpu().eval()
