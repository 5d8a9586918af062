"""A PNG of a ``compress bench`` report: latency per artifact / runtime / threads, and latency vs accuracy.

Bars are the pooled median latency; the error bar spans the per-round medians (lowest to highest round), i.e.
the spread that the ratios' noise estimates come from — a bar whose error bar overlaps another's is not
reliably different. A second panel plots median latency against accuracy when the report has accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.errors import ConfigError, require
from compress.runtime.report import _check, fmt_ms, machine_line


def plot_report(report: dict, path: str | os.PathLike) -> Path:
    """Draw the report to a PNG file.

    Args:
        report: a :func:`compress.runtime.bench.run_bench` report (or its JSON loaded back).
        path: the ``.png`` to write.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: matplotlib is not installed (``pip install 'edge-compress[plot]'``).
        ConfigError: the path does not end in ``.png`` or cannot be written.

    Example:
        >>> plot_report(run_bench(["m.onnx"]), "bench.png")  # doctest: +SKIP
    """
    _check(report)
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--plot writes PNG; name the file {out.with_suffix('.png').name}")
    require("matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = report["results"]
    with_acc = [r for r in results if r.get("accuracy") is not None]
    groups = list(dict.fromkeys((r["name"], r["runtime_label"]) for r in results))
    threads = sorted({r["threads"] for r in results})
    height = max(3.2, 0.5 * len(results) + 1.6)
    fig = Figure(figsize=(11 if with_acc else 8, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, width_ratios=[3, 2]) if with_acc else [fig.subplots()]
    _latency_panel(axes[0], results, groups, threads, report)
    if with_acc:
        _accuracy_panel(axes[1], with_acc, threads)
    s = report["settings"]
    where = f" on {s['device']}" if s.get("device") else ""
    fig.suptitle(f"compress bench{where}: batch {s['batch']}, {s['rounds']} alternated rounds, one process each",
                 fontsize=11)
    fig.supxlabel(machine_line(report.get("machine"), short=True), fontsize=7, color="0.35")
    from compress.io.atomic import os_error, staged_file

    with staged_file(out, option="--plot") as tmp:  # a killed or failed savefig leaves no half-written PNG
        try:
            fig.savefig(tmp, dpi=110, format="png")
        except OSError as exc:
            raise os_error(exc, out, "--plot") from exc
    return out


def _latency_panel(ax, results, groups, threads, report) -> None:
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    width = 0.8 / len(threads)
    top = 0.0
    for j, t in enumerate(threads):
        ys, meds, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            r = next((r for r in results if (r["name"], r["runtime_label"]) == g and r["threads"] == t), None)
            if r is None:
                continue
            med = r["latency_ms"]["median"]
            rounds = r.get("round_medians_ms") or [med]
            ys.append(i + (j - (len(threads) - 1) / 2) * width)
            meds.append(med)
            lo.append(max(med - min(rounds), 0.0))
            hi.append(max(max(rounds) - med, 0.0))
            top = max(top, max(rounds), med)
        if not ys:
            continue
        ax.barh(ys, meds, height=width * 0.9, xerr=[lo, hi], capsize=3, color=colors[j % len(colors)],
                label=f"{t} thread{'s' if t != 1 else ''}", error_kw={"elinewidth": 1, "ecolor": "0.2"})
        for y, m, h in zip(ys, meds, hi, strict=True):
            ax.text(m + h + top * 0.01, y, f"{fmt_ms(m)} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(groups)), [f"{name}\n{runtime}" for name, runtime in groups], fontsize=9)
    ax.invert_yaxis()  # the first artifact (the baseline) on top, as in the table
    ax.set_xlim(0, top * 1.25 if top > 0 else 1)
    ax.set_xlabel("median latency per run (ms); error bar: lowest to highest round median")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title="threads" if len(threads) > 1 else None, title_fontsize=8)
    ax.set_title("latency (shorter is faster)", fontsize=10)


def _accuracy_panel(ax, results, threads) -> None:
    markers = ["o", "s", "^", "D", "v", "P"]
    for j, t in enumerate(threads):
        rows = [r for r in results if r["threads"] == t]
        if not rows:
            continue
        xs = [r["latency_ms"]["median"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        ax.scatter(xs, ys, marker=markers[j % len(markers)], s=40, label=f"{t} thread{'s' if t != 1 else ''}")
    # One label per artifact and runtime (its thread counts share the accuracy), at its fastest point.
    # Labels are staggered vertically: artifacts often share one accuracy (an int8 file that kept it), and
    # labels on one line would overprint each other.
    for i, key in enumerate(dict.fromkeys((r["name"], r["runtime"]) for r in results)):
        rows = [r for r in results if (r["name"], r["runtime"]) == key]
        best = min(rows, key=lambda r: r["latency_ms"]["median"])
        ax.annotate(f"{key[0]} ({key[1]})", (best["latency_ms"]["median"], 100 * best["accuracy"]),
                    textcoords="offset points", xytext=(4, 7 + 13 * (i % 4)), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if i % 4 else None)
    accs = [100 * r["accuracy"] for r in results]
    span = max(max(accs) - min(accs), 0.5)
    ax.set_ylim(min(accs) - span * 0.6, max(accs) + span * 0.6)
    ax.set_xlim(left=0, right=max(r["latency_ms"]["median"] for r in results) * 1.45)
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy vs latency (up and left is better)", fontsize=10)
