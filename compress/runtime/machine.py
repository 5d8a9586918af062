"""Describe the machine a measurement ran on: CPU model and ISA flags, cores, OS, Python, library versions.

Every benchmark figure is stored next to this description, because int8 speed-ups depend on the ISA
(onnxruntime's u8s8 kernels win big on AVX2 without VNNI; VNNI / AVX-512 / ARM dotprod change the picture).
Versions come from package metadata, so describing the machine imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

# ISA features that decide which int8 / fp32 kernels runtimes pick. x86 names as in /proc/cpuinfo "flags",
# ARM names as in "Features".
ISA_FLAGS_X86 = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx_vnni", "avxvnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
ISA_FLAGS_ARM = ("neon", "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2", "fphp")

_VERSIONED_PACKAGES = ("torch", "onnxruntime", "onnx", "onnxscript", "numpy", "ai-edge-litert", "edge-compress")


def parse_cpuinfo(text: str) -> dict:
    """Extract the CPU model name and the ISA flags that matter for inference from /proc/cpuinfo text.

    Args:
        text: the contents of ``/proc/cpuinfo``.

    Returns:
        ``{"model": str | None, "isa": [flags present, in a fixed order]}``.

    Example:
        >>> parse_cpuinfo("model name : Some CPU\\nflags : fpu avx2 avx512f\\n")["isa"]
        ['avx2', 'avx512f']
    """
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    # Linux spells the AVX-VNNI (VEX-encoded) flag "avx_vnni"; some tools write "avxvnni". Report both names.
    if "avx_vnni" in flags:
        flags.add("avxvnni")
    isa = [f for f in ISA_FLAGS_X86 + ISA_FLAGS_ARM if f in flags]
    return {"model": model, "isa": isa}


def _cpu_model_fallback() -> str | None:
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5, check=False)
            return out.stdout.strip() or None
        except OSError:
            return None
    return platform.processor() or None


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | os.PathLike | None = None) -> dict | None:
    """The git commit of the checkout holding ``path`` (default: this package), or None outside a checkout.

    Returns:
        ``{"commit": sha, "dirty": bool}`` or ``None``.

    Example:
        >>> info = git_commit()
        >>> info is None or len(info["commit"]) == 40
        True
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10, check=False)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine_description() -> dict:
    """Describe this machine for benchmark reports.

    Returns:
        A JSON-ready dict: ``cpu`` (model, arch, isa flags, logical cores, cores usable by this process),
        ``os``, ``python``, ``versions`` (torch, onnxruntime, onnx, numpy, ... or None when absent) and
        ``git`` (commit and dirty flag of the package checkout, or None).

    Example:
        >>> d = machine_description()
        >>> sorted(d)[:3]
        ['cpu', 'git', 'os']
    """
    cpuinfo = {"model": None, "isa": []}
    try:
        cpuinfo = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        pass  # not Linux: the model comes from the fallback, the flags stay unknown
    model = cpuinfo["model"] or _cpu_model_fallback()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows have no affinity API
        usable = os.cpu_count()
    return {
        "cpu": {
            "model": model,
            "arch": platform.machine(),
            "isa": cpuinfo["isa"],
            "logical_cores": os.cpu_count(),
            "usable_cores": usable,
        },
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "versions": _versions(),
        "git": git_commit(),
    }


def machine_slug(description: dict | None = None) -> str:
    """A short filesystem-safe name for a machine, e.g. ``x86_64-intel-xeon-processor-2c``.

    Args:
        description: a :func:`machine_description` dict (default: describe this machine).

    Returns:
        Lowercase ``arch-cpu-model-<cores>c``, with runs of other characters replaced by ``-``.

    Example:
        >>> machine_slug({"cpu": {"arch": "aarch64", "model": "Cortex-A76", "logical_cores": 4}})
        'aarch64-cortex-a76-4c'
    """
    d = description if description is not None else machine_description()
    cpu = d["cpu"]
    raw = f"{cpu.get('arch') or 'unknown'}-{cpu.get('model') or 'cpu'}-{cpu.get('logical_cores') or 0}c"
    raw = re.sub(r"\((r|tm)\)", "", raw.lower())  # trademark marks only make the name longer
    return re.sub(r"[^a-z0-9_]+", "-", raw).strip("-")
