"""Which runtimes can run which artifact, and running one measurement in a fresh local process.

The code that loads and times a model lives in :mod:`compress.runtime._device_runner`, a self-contained script:
the same file runs here (``python _device_runner.py measure``, one process per measurement) and on remote
devices (:mod:`compress.runtime.remote`), so a figure measured on a phone and one measured here come from the
same timing loop. This module is the parent's side: the :class:`Runtime` options, the file formats each one
loads, and :class:`LocalExecutor`, which runs the script and turns its error reports into
:class:`~compress.errors.CompressError` subclasses with one-line messages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path

from compress.errors import CompressError, ConfigError, DataError, MissingDependencyError, ModelLoadError

#: The runner script, copied as-is to remote devices.
RUNNER_PATH = Path(__file__).resolve().with_name("_device_runner.py")
#: Copied beside the runner on devices so that they describe themselves exactly as this machine does.
MACHINE_PATH = Path(__file__).resolve().with_name("machine.py")


class Runtime(str, Enum):
    """A runtime ``compress bench`` measures with.

    ``ort``: onnxruntime CPU. ``litert``: LiteRT (ai-edge-litert) with its default XNNPACK delegate, as apps
    run it. ``litert-noxnnpack``: LiteRT's builtin kernels only. ``torch``: PyTorch eager. ``torch-compile``:
    ``torch.compile`` (inductor; the first run compiles, which the warm-up absorbs and ``first_run_ms`` shows).
    """

    ORT = "ort"
    LITERT = "litert"
    LITERT_NOXNNPACK = "litert-noxnnpack"
    TORCH = "torch"
    TORCH_COMPILE = "torch-compile"

    @property
    def label(self) -> str:
        """A human name for tables."""
        return _LABELS[self]


_LABELS = {Runtime.ORT: "onnxruntime", Runtime.LITERT: "LiteRT", Runtime.LITERT_NOXNNPACK: "LiteRT no-XNNPACK",
           Runtime.TORCH: "torch eager", Runtime.TORCH_COMPILE: "torch.compile"}

#: File suffix → the runtimes that load it, the first being the default.
FORMATS: dict[str, tuple[Runtime, ...]] = {
    ".onnx": (Runtime.ORT,),
    ".tflite": (Runtime.LITERT, Runtime.LITERT_NOXNNPACK),
    ".pt2": (Runtime.TORCH, Runtime.TORCH_COMPILE),
    ".pt": (Runtime.TORCH, Runtime.TORCH_COMPILE),
    ".pth": (Runtime.TORCH, Runtime.TORCH_COMPILE),
}

# The module the runner imports for a runtime → (pip distribution, compress extra).
_PIP = {"onnxruntime": ("onnxruntime", "onnx"), "ai_edge_litert.interpreter": ("ai-edge-litert", "tflite"),
        "ai_edge_litert": ("ai-edge-litert", "tflite"), "numpy": ("numpy", "core"), "torch": ("torch", "core"),
        "compress": ("edge-compress", "core")}


def parse_runtimes(values: str | Iterable[str] | None) -> tuple[Runtime, ...] | None:
    """``"ort,litert"`` (or several such strings) → runtimes; None or empty → None (each file's default).

    Example:
        >>> [r.value for r in parse_runtimes("ort, litert-noxnnpack")]
        ['ort', 'litert-noxnnpack']
    """
    if values is None:
        return None
    parts = [values] if isinstance(values, str) else list(values)
    names = [p.strip().lower() for part in parts for p in part.split(",") if p.strip()]
    out: list[Runtime] = []
    for name in names:
        try:
            runtime = Runtime(name)
        except ValueError:
            raise ConfigError(f"unknown runtime {name!r}; use one of {', '.join(r.value for r in Runtime)}") from None
        if runtime not in out:
            out.append(runtime)
    return tuple(out) or None


def artifact_suffix(path: str | os.PathLike) -> str:
    """The artifact's format suffix, validated (``.onnx``, ``.tflite``, ``.pt2``, ``.pt``, ``.pth``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ModelLoadError(f"cannot tell how to run {Path(path).name!r}; bench takes .onnx, .tflite, .pt2, "
                             "or a .pt/.pth state dict with --arch")
    return suffix


def runtimes_for(path: str | os.PathLike, wanted: Sequence[Runtime] | None = None) -> tuple[Runtime, ...]:
    """The runtimes to measure ``path`` with: its default, or those of ``wanted`` that can load it.

    Raises:
        ConfigError: none of ``wanted`` loads this format (the message names the ones that do).

    Example:
        >>> [r.value for r in runtimes_for("m.tflite", [Runtime.ORT, Runtime.LITERT_NOXNNPACK])]
        ['litert-noxnnpack']
    """
    able = FORMATS[artifact_suffix(path)]
    if not wanted:
        return able[:1]
    chosen = tuple(r for r in wanted if r in able)
    if not chosen:
        raise ConfigError(f"--runtime {','.join(r.value for r in wanted)} cannot run {Path(path).name}; "
                          f"{Path(path).suffix} files run with {', '.join(r.value for r in able)}")
    return chosen


def error_from_runner(error: Mapping, *, artifact: str | None = None, host: str | None = None) -> Exception:
    """Turn the runner's ``{"kind", "message", "module"}`` report into the exception to raise here.

    Args:
        error: the ``error`` object of a failed runner answer.
        artifact: the artifact the request was about (named in load errors).
        host: the device it ran on, or None for this machine (named in missing-module errors).

    Returns:
        A :class:`~compress.errors.CompressError` subclass for user errors, ``RuntimeError`` for bugs.
    """
    kind, message, module = error.get("kind"), str(error.get("message", "")), error.get("module")
    where = f" on {host}" if host else ""
    if kind == "MissingModule":
        top = (module or "").split(".")[0] or "a module"
        pip, extra = _PIP.get(module or "", _PIP.get(top, (top, "core")))
        if host:
            fix = (f"pip install {pip} there, or pass --remote-python with an interpreter that has it"
                   if top != "compress" else message)
            return MissingDependencyError(f"{top} is not installed on {host}; {fix}")
        if top == "compress":
            return MissingDependencyError(message)
        return MissingDependencyError(f"{top} is not installed; install it with `pip install 'edge-compress[{extra}]'`")
    if kind == "ModelLoadError":
        name = artifact or "the artifact"
        return ModelLoadError(f"cannot benchmark {name}{where}: {message}; check it is a complete export "
                              "(re-export it)")
    if kind == "DataError":
        return DataError(f"{artifact + ': ' if artifact else ''}{message}")
    if kind == "ConfigError":
        return ConfigError(f"{artifact + ': ' if artifact else ''}{message}")
    tb = error.get("traceback") or ""
    return RuntimeError(f"the benchmark runner failed{where}: {message}\n{tb}".rstrip())


def parse_answer(stdout: str, stderr: str, returncode: int, *, where: str = "the runner") -> dict:
    """The runner's JSON answer (its last stdout line), or RuntimeError with the tail of stderr."""
    lines = [ln for ln in (stdout or "").splitlines() if ln.strip()]
    if lines:
        try:
            answer = json.loads(lines[-1])
            if isinstance(answer, dict) and "ok" in answer:
                return answer
        except ValueError:
            pass
    tail = " | ".join((stderr or "").strip().splitlines()[-4:])
    raise RuntimeError(f"{where} exited with status {returncode} and no answer: {tail}")


class LocalExecutor:
    """Runs the runner script in a fresh local Python process per call.

    Args:
        python: the interpreter (default: this one).
        timeout: seconds one measurement may take before it is killed.

    Example:
        >>> ex = LocalExecutor()
        >>> ex.call("measure", {"runtime": "ort", "path": "m.onnx", "runs": 20})["samples_s"]  # doctest: +SKIP
    """

    host: str | None = None

    def __init__(self, python: str | None = None, timeout: float = 600.0):
        self.python = python or sys.executable
        self.timeout = timeout

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to clean up locally."""

    def stage(self, paths: Iterable[str | os.PathLike]) -> dict[str, str]:
        """Where the runner finds each file: locally, its absolute path."""
        return {str(p): str(Path(p).resolve()) for p in paths}

    def describe(self) -> dict:
        """This machine's description (:func:`compress.runtime.machine.machine_description`)."""
        from compress.runtime.machine import machine_description

        return machine_description()

    def call(self, mode: str, request: Mapping, *, artifact: str | None = None) -> dict:
        """Run the runner once in ``mode`` with ``request``; returns its result or raises the mapped error."""
        env = dict(os.environ)
        # A state dict is loaded through compress.io in the child: it must import what this process can.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        try:
            proc = subprocess.run([self.python, str(RUNNER_PATH), mode], input=json.dumps(dict(request)),
                                  capture_output=True, text=True, timeout=self.timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise CompressError(f"measuring {artifact or 'the artifact'} took over {self.timeout:g} s; lower --runs "
                                "or --seconds") from None
        answer = parse_answer(proc.stdout, proc.stderr, proc.returncode)
        if not answer["ok"]:
            raise error_from_runner(answer["error"], artifact=artifact)
        return answer["result"]
