"""Render a ``compress bench`` report (the dict of :func:`compress.runtime.bench.run_bench`): JSON, Markdown, rich.

All renderers read only the documented report keys (``docs/bench.md``), so a saved JSON file renders the same
way as a fresh run: ``to_markdown(json.load(open("r.json")))``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from compress.errors import ConfigError

_LATENCY_KEYS = ("median", "p90", "p99", "mean", "std", "min")


def fmt_ms(value: float | None) -> str:
    """Milliseconds with about three significant digits: ``0.072``, ``1.23``, ``12.3``, ``123``.

    Example:
        >>> fmt_ms(0.07241), fmt_ms(12.34), fmt_ms(None)
        ('0.072', '12.3', '–')
    """
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_bytes(n: int | None) -> str:
    """``68208`` → ``66.6 KiB``.

    Example:
        >>> fmt_bytes(68208), fmt_bytes(61186048)
        ('66.6 KiB', '58.4 MiB')
    """
    if n is None:
        return "–"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_ratio(entry: dict | None) -> str:
    """A ``vs_baseline`` entry as ``0.428×±0.039`` (ratio of medians ± noise); ``–`` for the baseline itself.

    Example:
        >>> fmt_ratio({"median": {"ratio": 0.42794, "noise": 0.039}})
        '0.428×±0.039'
    """
    if not entry:
        return "–"
    r = entry["median"]
    return f"{r['ratio']:.3f}×±{r['noise']:.3f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _throughput(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


# The ISA flags a short machine line keeps: the ones that decide int8 / fp32 kernel choice most.
_KEY_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd", "asimddp", "i8mm", "sve")


def machine_line(machine: dict | None, short: bool = False) -> str:
    """One line describing a machine: CPU, cores, ISA flags, OS, Python and runtime versions.

    Args:
        machine: a machine description (:func:`compress.runtime.machine.machine_description`).
        short: keep only the ISA flags that matter most for kernel choice.

    Example:
        >>> machine_line({"cpu": {"model": "Cortex-A76", "arch": "aarch64", "logical_cores": 4, "isa": ["asimddp"]},
        ...               "os": {"system": "Linux"}, "python": {"version": "3.11.2"}, "versions": {}})
        'Cortex-A76 (aarch64, 4 cores; asimddp) · Linux · Python 3.11.2'
    """
    if not machine:
        return "unknown machine"
    cpu = machine.get("cpu", {})
    flags = [f for f in cpu.get("isa") or [] if not short or f in _KEY_ISA]
    isa = ", ".join(flags) or "ISA unknown"
    parts = [f"{cpu.get('model') or 'unknown CPU'} ({cpu.get('arch')}, {cpu.get('logical_cores')} cores; {isa})",
             (machine.get("os") or {}).get("system") or "unknown OS",
             f"Python {(machine.get('python') or {}).get('version')}"]
    versions = machine.get("versions") or {}
    libs = [f"{k} {v}" for k in ("onnxruntime", "ai-edge-litert", "torch") if (v := versions.get(k))]
    git = machine.get("git") or {}
    if git.get("commit"):
        libs.append(f"compress {git['commit'][:10]}{'+dirty' if git.get('dirty') else ''}")
    return " · ".join(parts + libs)


def _check(report: dict) -> None:
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("compress.bench/"):
        raise ConfigError("not a compress bench report (no schema 'compress.bench/N'); pass the JSON that "
                          "`compress bench --json` wrote")


def _ratio_note(report: dict) -> str:
    rounds = report["settings"]["rounds"]
    return (f"vs first: latency ÷ that of {report['baseline'].rsplit(' ', 1)[0]} at the same threads, paired "
            f"within each of {rounds} alternated round{'s' if rounds != 1 else ''} (median ± half the range of "
            "the per-round ratios; < 1 is faster)")


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as indented JSON (UTF-8) all-or-nothing (temporary file, then rename); return the path.

    Example:
        >>> write_json(report, "r.json")  # doctest: +SKIP
    """
    from compress.io.atomic import write_text_atomic

    _check(report)
    return write_text_atomic(path, json.dumps(report, indent=2) + "\n", option="--json")


def write_markdown(report: dict, path: str | os.PathLike) -> Path:
    """Write :func:`to_markdown` all-or-nothing (temporary file, then rename); return the path.

    Example:
        >>> write_markdown(report, "r.md")  # doctest: +SKIP
    """
    from compress.io.atomic import write_text_atomic

    return write_text_atomic(path, to_markdown(report), option="--markdown")


def to_markdown(report: dict) -> str:
    """The report as Markdown: the machine, one table with every figure, and how to read the ratios.

    Example:
        >>> print(to_markdown(report))  # doctest: +SKIP
    """
    _check(report)
    s = report["settings"]
    where = f" on `{s['device']}`" if s.get("device") else ""
    lines = [f"## compress bench{where}", "", f"Machine: {machine_line(report.get('machine'))}", "",
             f"Batch {s['batch']}, {s['rounds']} rounds × "
             + (f"{s['seconds']:g} s" if s.get("seconds") else f"{s['runs']} runs")
             + f" per process after {s['warmup']} warm-up runs, one fresh process per measurement, contenders "
             "alternated." + (" Processes pinned to cores." if s.get("pin") else ""), "",
             "| artifact | runtime | threads | median ms | p90 | p99 | mean | std | min | items/s | vs first | "
             "load s | peak RSS | size | accuracy | agreement |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in report["results"]:
        lat = r["latency_ms"]
        cells = [r["name"], r["runtime_label"], str(r["threads"]), *(fmt_ms(lat[k]) for k in _LATENCY_KEYS),
                 _throughput(r["throughput_per_s"]), fmt_ratio(r.get("vs_baseline")), f"{r['load_s']:.3f}",
                 fmt_bytes(r.get("peak_rss_bytes")), fmt_bytes(r.get("file_bytes")), _pct(r.get("accuracy")),
                 _pct(r.get("agreement"))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", _ratio_note(report) + ".", "Peak RSS: the whole measured process (interpreter, runtime, model)."]
    if s.get("data"):
        d = s["data"]
        lines.append(f"Accuracy on {d['samples']} samples of {Path(d['path']).name}"
                     + ("" if d.get("labels") else " (no labels: agreement only)")
                     + "; agreement: top-1 agreement with the first artifact.")
    return "\n".join(lines) + "\n"


def render_tables(report: dict):
    """Rich renderables for the terminal: a latency table, a resources/accuracy table and the notes.

    Returns:
        A ``rich.console.Group``; print it with a ``rich.console.Console``.
    """
    from rich import box as rich_box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    _check(report)
    s = report["settings"]
    where = f" on {s['device']}" if s.get("device") else ""
    # No vertical rules, numbers never wrap, and the name folds: the tables fit an 80-column terminal.
    box = rich_box.SIMPLE_HEAVY
    latency = Table(title=f"compress bench{where} — latency (ms, batch {s['batch']})", title_justify="left", box=box,
                    pad_edge=False, collapse_padding=True)
    latency.add_column("contender", overflow="fold", min_width=12)
    for k in _LATENCY_KEYS:
        latency.add_column(k, justify="right", no_wrap=True)
    latency.add_column("vs first", justify="right", no_wrap=True)
    resources = Table(title="throughput, load, memory, size, accuracy", title_justify="left", box=box,
                    pad_edge=False, collapse_padding=True)
    resources.add_column("contender", overflow="fold", min_width=12)
    for name in ("items/s", "load s", "1st ms", "peak RSS", "size", "accuracy", "agree"):
        resources.add_column(name, justify="right", no_wrap=True)
    for r in report["results"]:
        label = f"{r['name']} {r['runtime']} {r['threads']}t"
        lat = r["latency_ms"]
        latency.add_row(label, *(fmt_ms(lat[k]) for k in _LATENCY_KEYS), fmt_ratio(r.get("vs_baseline")))
        resources.add_row(label, _throughput(r["throughput_per_s"]), f"{r['load_s']:.3f}",
                          fmt_ms(r.get("first_run_ms")), fmt_bytes(r.get("peak_rss_bytes")),
                          fmt_bytes(r.get("file_bytes")), _pct(r.get("accuracy")), _pct(r.get("agreement")))
    mode = f"{s['seconds']:g} s" if s.get("seconds") else f"{s['runs']} runs"
    notes = Text(f"{s['rounds']} rounds × {mode} per process after {s['warmup']} warm-up runs; one fresh process "
                 f"per measurement, alternated{'; pinned' if s.get('pin') else ''}.\n{_ratio_note(report)}.\n"
                 f"machine: {machine_line(report.get('machine'), short=True)}", style="dim")
    return Group(latency, resources, notes)
