"""``compress prune MODEL (--sparsity S | --nm N:M | --channels C | --latency-target F | --latency-ms X |
--plan plan.json) -o OUTDIR``.

Prunes, optionally fine-tunes, and writes OUTDIR/model.pt2 (torch.export, loadable by every command without
--arch), state_dict.pt, plan.json, model_fp32.onnx (verified in onnxruntime against the pruned torch model;
model_fp32.tflite too with --format tflite), with --quantize --calib the int8 files of the quantize pipeline
(model_int8.onnx / .tflite), and report.json. The output is staged and renamed into place only when complete,
like ``compress quantize``.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import click

from compress.cli._common import (
    check_labels,
    check_output_dir,
    debug_option,
    finish_report,
    handle_errors,
    quiet_library,
    staged_output,
    stdout_console,
)
from compress.cli.quantize import _spec_files, parse_formats
from compress.errors import ConfigError

# Literal copies of compress.passes.prune.Criterion values, so `compress --help` does not import torch.
CRITERION_CHOICES = ("l1", "l2", "bn", "taylor")
RUNTIME_CHOICES = ("ort", "litert", "torch")
VERIFY_SAMPLES = 8
REPORT_VERSION = 1
_RUNTIMES = {"onnx": "onnxruntime", "tflite": "LiteRT"}


def _skip_list(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip()) if text else ()


def _example(net, datasets: dict, input_shape: str | None):
    """Two samples to capture with (a batch of 2 keeps the batch dimension dynamic) and verification batches."""
    import numpy as np
    import torch

    from compress.cli._shapes import check_shape_memory, parse_shape

    for role in ("eval", "train", "calib"):
        if role in datasets:
            data = datasets[role]
            n = min(len(data), VERIFY_SAMPLES)
            return data.example(min(2, len(data))), [tuple(a[:n] for a in data.arrays)]
    shape = parse_shape(input_shape)
    check_shape_memory(net, input_shape, shape, copies=4)
    x = np.random.default_rng(0).standard_normal((max(2, shape[0]), *shape[1:]), dtype=np.float32)
    return (torch.from_numpy(x),), [(x,)]


def _export_fp32(fmt: str, model, example, path: Path, batches=None):
    """fp32 ONNX / TFLite the way ``compress export`` writes it; verified (strict) when ``batches`` are given."""
    from compress.cli.export import _export, _verify

    with quiet_library():
        info = _export(fmt, model, tuple(t[:1] for t in example), path, None)
    return info, (_verify(fmt, path, model, batches, info) if batches is not None else None)


def _file_latencies(paths: dict[str, Path], example, threads: int = 1, rounds: int = 9) -> dict[str, float]:
    """Median batch-1 latency (ms) of each file in its runtime, timed interleaved (fastest of ``rounds``)."""
    from compress.passes.prune.latency import time_interleaved
    from compress.pipeline import _onnx_runner, _tflite_runner

    x = tuple(t[:1].numpy() for t in example)
    runners = []
    for path in paths.values():
        run = (_onnx_runner if path.suffix == ".onnx" else _tflite_runner)(path, threads)
        runners.append(lambda run=run: run(x))
    return dict(zip(paths, time_interleaved(runners, rounds=rounds), strict=True))


def _config(sparsity, nm, channels, latency_target, latency_ms, scope_global, criterion, round_to, max_sparsity,
            skip):
    from compress.passes.prune import NM, LatencyTarget, PruneConfig

    given = [flag for flag, v in (("--sparsity", sparsity), ("--nm", nm), ("--channels", channels),
                                  ("--latency-target", latency_target), ("--latency-ms", latency_ms))
             if v is not None]
    if len(given) != 1:
        raise ConfigError("choose one pruning mode: --sparsity 0.8 (unstructured), --nm 2:4, --channels 0.5 "
                          "(structured) or --latency-target 0.5 / --latency-ms 4, or replay --plan plan.json"
                          f"{'; got ' + ', '.join(given) if len(given) > 1 else ''}")
    if scope_global and sparsity is None:
        raise ConfigError("--global ranks weights across layers for --sparsity only; drop it or use --sparsity")
    structured = channels is not None or latency_target is not None or latency_ms is not None
    if not structured and (criterion is not None or round_to is not None):
        raise ConfigError("--criterion and --round-to apply to structured pruning; add --channels 0.5 or "
                          "--latency-target 0.5")
    latency = None if latency_target is None and latency_ms is None else \
        LatencyTarget(fraction=latency_target, ms=latency_ms)
    return PruneConfig(sparsity=sparsity, nm=NM.parse(nm) if nm else None, channels=channels, latency=latency,
                       scope="global" if scope_global else "layer", criterion=criterion or "l1",
                       round_to=round_to or 1, max_sparsity=1.0 if max_sparsity is None else max_sparsity,
                       skip=_skip_list(skip))


def _groups_summary(plan: dict) -> list[dict]:
    return [{k: g[k] for k in ("key", "width_before", "width_after", "skipped")} for g in plan.get("groups", [])]


def run_prune(net, example, batches, config, plan, datasets: dict, staging: Path, *, epochs: int, lr: float,
              batch_size: int, formats: tuple[str, ...] = ("onnx",), calib=None, measure=None) -> dict:
    """Prune (or replay ``plan``), fine-tune, finalize, save and verify into ``staging``; returns the report.

    Every format in ``formats`` gets a verified fp32 file; with ``calib`` (a Dataset) the quantize pipeline
    also writes and verifies int8 files of the pruned model in each format. ``measure`` times the latency
    table of ``--latency-target`` (:class:`OrtLatency` or :class:`compress.passes.prune.TorchLatency`).
    """
    import copy

    from compress.layers.prune import finalize
    from compress.passes.prune import FinetuneConfig, apply_plan, finetune, prune, save_pruned
    from compress.passes.prune import report as figures

    evaluation = datasets.get("eval")
    before = {"params": figures.count_params(net), "nonzero_params": figures.count_nonzero(net),
              "macs": figures.count_macs(net, example), "state_dict": figures.state_dict_sizes(net)}
    accuracy = {"before": figures.accuracy(net, evaluation)} if evaluation is not None else {}
    # the unpruned files, for the size and latency comparison per runtime; removed below
    unpruned = {fmt: staging / f".unpruned_fp32.{fmt}" for fmt in ("onnx", *(f for f in formats if f != "onnx"))}
    for fmt, path in unpruned.items():
        _export_fp32(fmt, net, example, path)
    before["onnx_fp32"] = figures.disk_sizes(unpruned["onnx"])

    data = datasets.get("train") or evaluation  # labelled batches for the taylor criterion
    result = apply_plan(copy.deepcopy(net), example, plan) if plan is not None else \
        prune(copy.deepcopy(net), example, config, data=data, measure=measure)
    model, plan = result.model, result.plan
    if evaluation is not None:
        accuracy["after_prune"] = figures.accuracy(model, evaluation)
    history = None
    if "train" in datasets:
        from compress.passes.prune import PruneConfig

        history = finetune(model, datasets["train"], FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size),
                           prune_config=PruneConfig.from_dict(plan["config"]))
        if evaluation is not None:
            accuracy["after_finetune"] = figures.accuracy(model, evaluation)
    finalize(model)  # masks → zeros in the weights: nothing mask-shaped is saved or exported
    model.eval()

    save_pruned(model, example, plan, staging)
    exported = {}  # format -> its fp32 section: verified in its runtime against the pruned torch model
    for fmt in ("onnx", *(f for f in formats if f != "onnx")):
        path = staging / f"model_fp32.{fmt}"
        info, parity = _export_fp32(fmt, model, example, path, batches)
        exported[fmt] = {"file": path.name, "max_rel_diff": parity.max_rel_diff, **figures.disk_sizes(path)}
        if fmt == "onnx":
            exported[fmt]["opset"] = info.opset
        if fmt == "tflite":
            exported[fmt]["sparse_weights"] = _tflite_sparse_sizes(model, example, path, info)
    times = _file_latencies({**{f"before_{fmt}": path for fmt, path in unpruned.items()},
                             **{fmt: staging / sec["file"] for fmt, sec in exported.items()}}, example)
    for path in unpruned.values():
        path.unlink()
    before["latency_ms"] = {fmt: times.pop(f"before_{fmt}") for fmt in unpruned}
    for fmt, ms in times.items():
        exported[fmt]["latency_ms"] = ms
    after = {"params": figures.count_params(model), "nonzero_params": figures.count_nonzero(model),
             "macs": figures.count_macs(model, example), "state_dict": figures.state_dict_sizes(model),
             "onnx_fp32": figures.disk_sizes(staging / "model_fp32.onnx"), "latency_ms": times}
    report = {
        "version": REPORT_VERSION, "command": "prune", "mode": plan["mode"], "config": plan["config"],
        "model": {"class": type(net).__name__}, "before": before, "after": after,
        "groups": _groups_summary(plan), "layer_sparsity": figures.layer_sparsity(model),
        "accuracy": accuracy, "finetune": None if history is None else {"epochs": epochs, "lr": lr, "loss": history},
        "onnx": {"opset": exported["onnx"]["opset"], "max_rel_diff": exported["onnx"]["max_rel_diff"],
                 "verified_on_samples": len(batches[0][0])},
        "formats": exported,
    }
    if "latency" in plan:
        search = {k: v for k, v in plan["latency"].items() if k != "table"}
        fmt = "tflite" if search["runtime"].startswith("litert") else "onnx"  # torch: the ONNX file
        report["latency"] = {**search, "final_file": {
            "file": exported[fmt]["file"], "runtime": _RUNTIMES[fmt], "ms": times[fmt],
            "ratio_to_unpruned": times[fmt] / before["latency_ms"][fmt]}}
        report["latency_table"] = plan["latency"]["table"]
    if calib is not None:
        report["quantized"] = _quantize(staging, calib, evaluation, formats, batch_size)
    if plan["mode"] in ("unstructured", "nm"):
        report["sparse_speed"] = _sparse_speed(net, example, staging, times["onnx"] / before["latency_ms"]["onnx"],
                                               calib, batch_size, before, after,
                                               exported.get("tflite", {}).get("sparse_weights"))
    names = ["model.pt2", "state_dict.pt", "plan.json", *(sec["file"] for sec in exported.values()),
             *(sec["file"] for sec in report.get("quantized", {}).get("formats", {}).values()), "report.json"]
    report["files"] = {name: str(staging / name) for name in names}
    if evaluation is not None:
        report["evaluated_on"] = {"set": "eval", "samples": len(evaluation), "source": str(evaluation.source)}
    from compress.io.atomic import write_json_atomic

    write_json_atomic(staging / "report.json", report)
    return report


class OrtLatency:
    """The latency table's ``measure`` in onnxruntime: the graph exported to fp32 ONNX as ``compress export``
    writes it, one session on ``threads`` threads, batch 1 (see :mod:`compress.passes.prune.latency`)."""

    fmt = "onnx"

    def __init__(self, threads: int = 1):
        import onnxruntime

        self.threads = threads
        self.name = f"onnxruntime-{onnxruntime.__version__}-{threads}t"

    def runner(self, model, example_inputs):
        from compress.pipeline import _onnx_runner, _tflite_runner

        with tempfile.TemporaryDirectory() as tmp:  # the session holds the model: the file can go
            path = Path(tmp) / f"m.{self.fmt}"
            _export_fp32(self.fmt, model, example_inputs, path)
            run = (_onnx_runner if self.fmt == "onnx" else _tflite_runner)(path, self.threads)
        x = tuple(t[:1].numpy() for t in example_inputs)
        return lambda: run(x)

    def pinned(self):
        return contextlib.nullcontext()


class LiteRTLatency(OrtLatency):
    """The same in LiteRT (XNNPACK): the graph exported to fp32 TFLite."""

    fmt = "tflite"

    def __init__(self, threads: int = 1):
        from importlib.metadata import version

        self.threads = threads
        self.name = f"litert-{version('ai-edge-litert')}-{threads}t"


def _tflite_sparse_sizes(model, example, path: Path, info) -> dict:
    """The fp32 TFLite file with its pruned weights stored sparse (CSR + DENSIFY, as written) beside the same
    file written dense: bytes and gzip bytes of each, and the weights' payloads."""
    from compress.exporters.tflite import TFLiteExportConfig, export_tflite
    from compress.passes.prune import report as figures

    with tempfile.TemporaryDirectory() as tmp, quiet_library():
        dense = Path(tmp) / "dense.tflite"
        export_tflite(model, tuple(t[:1] for t in example), dense, TFLiteExportConfig(sparse_weights=False))
        dense_sizes = figures.disk_sizes(dense)
    weights = info.sparse_weights
    return {"tensors": len(weights), "weights_dense_bytes": sum(w["dense_bytes"] for w in weights),
            "weights_sparse_bytes": sum(w["sparse_bytes"] for w in weights),
            "dense_file": dense_sizes, "sparse_file": figures.disk_sizes(path)}


def _sparse_speed(net, example, staging: Path, fp32_ratio: float, calib, batch_size: int, before: dict,
                  after: dict, tflite_sparse: dict | None = None) -> dict:
    """What zeros in dense tensors buy, measured: latency ratios to the unpruned files and the gzip sizes.

    Neither onnxruntime's nor LiteRT's CPU kernels skip zeros (no N:M or sparse-weight kernels for these
    ops), so a masked model is as slow as the dense one; with ``calib`` the unpruned model is quantized too,
    so the int8 ratio compares int8 with int8.
    """
    out = {"onnx_fp32_latency_ratio": fp32_ratio,
           "gzip_ratio": after["onnx_fp32"]["gzip_bytes"] / before["onnx_fp32"]["gzip_bytes"]}
    if calib is not None:
        from compress.pipeline import QuantizeOptions, quantize_model

        with tempfile.TemporaryDirectory() as tmp, quiet_library():
            quantize_model(net, calib, tmp, QuantizeOptions(formats=("onnx",), batch_size=batch_size,
                                                            latency_runs=5), progress=False)
            t = _file_latencies({"dense": Path(tmp) / "model.onnx", "sparse": staging / "model_int8.onnx"}, example)
        out["onnx_int8_latency_ratio"] = t["sparse"] / t["dense"]
    ratios = ", ".join(f"{k.split('_latency')[0].replace('_', ' ')} {v:.2f}×" for k, v in out.items()
                       if k.endswith("latency_ratio"))
    out["note"] = (f"zeros are stored dense in ONNX: onnxruntime (CPU) has no sparse or N:M kernels, so the pruned "
                   f"file runs at {ratios} the unpruned latency (measured, batch 1, 1 thread); it is smaller only "
                   f"compressed: gzip {out['gzip_ratio']:.2f}× the unpruned file. Use --channels or "
                   f"--latency-target for speed")
    if tflite_sparse and tflite_sparse["tensors"]:  # CSR + DENSIFY: smaller on disk, dense kernels at load time
        d, s = tflite_sparse["dense_file"], tflite_sparse["sparse_file"]
        out["note"] += (f". The fp32 TFLite file stores {tflite_sparse['tensors']} weights sparse: "
                        f"{s['bytes'] / d['bytes']:.2f}× the dense file (gzip {s['gzip_bytes'] / d['gzip_bytes']:.2f}×), "
                        f"densified when LiteRT loads it, so it runs at the dense speed")
    return out


def _quantize(staging: Path, calib, evaluation, formats: tuple[str, ...], batch_size: int) -> dict:
    """int8 files of the pruned model by the quantize pipeline, from the saved ``model.pt2`` (what a user's
    ``compress quantize OUTDIR/model.pt2`` would load); the int8 files land beside the fp32 ones."""
    import shutil

    from compress.io import load_model
    from compress.pipeline import QuantizeOptions, quantize_model

    pruned = load_model(staging / "model.pt2")
    with tempfile.TemporaryDirectory() as tmp, quiet_library():
        q = quantize_model(pruned, calib, tmp, QuantizeOptions(formats=formats, batch_size=batch_size),
                           eval_data=evaluation, progress=False)
        sections = {}
        for fmt, sec in q["formats"].items():
            name = f"model_int8.{fmt}"
            shutil.move(Path(tmp) / f"model.{fmt}", staging / name)
            sec["parity"]["path"] = name  # was the temporary directory's copy
            sections[fmt] = {"file": name, "runtime": sec["runtime"], "fp32": sec["fp32"], "int8": sec["int8"],
                             "parity": sec["parity"], "export": sec["export"]}
    return {"formats": sections, "float_ops": q["float_ops"], "warnings": q["warnings"],
            "evaluated_on": q["evaluated_on"], "quantized_layers": q["quantized_layers"]}


def render(report: dict):
    """The one table the command prints: before / after / ratio per figure, and a line on the groups."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from compress.pipeline import _human_bytes

    b, a = report["before"], report["after"]
    table = Table(title=f"compress prune ({report['mode']}) — {report['model']['class']}", title_justify="left")
    for col in ("", "before", "after", "after / before"):
        table.add_column(col, justify="left" if not col else "right", no_wrap=True)

    def row(label, x, y, fmt=str):
        table.add_row(label, fmt(x), fmt(y), f"{y / x:.3f}" if x else "–")

    row("parameters", b["params"], a["params"], lambda v: f"{v:,}")
    row("non-zero parameters", b["nonzero_params"], a["nonzero_params"], lambda v: f"{v:,}")
    row("MACs / sample", b["macs"], a["macs"], lambda v: f"{v:,}")
    row("ONNX fp32", b["onnx_fp32"]["bytes"], a["onnx_fp32"]["bytes"], _human_bytes)
    row("ONNX fp32 gzip", b["onnx_fp32"]["gzip_bytes"], a["onnx_fp32"]["gzip_bytes"], _human_bytes)
    sparse = report.get("formats", {}).get("tflite", {}).get("sparse_weights")
    if sparse:  # the pruned file written dense vs with its weights stored sparse (before: dense, after: sparse)
        d, s = sparse["dense_file"], sparse["sparse_file"]
        row(f"TFLite fp32 dense → sparse ({sparse['tensors']} weights)", d["bytes"], s["bytes"], _human_bytes)
        row("TFLite fp32 gzip dense → sparse", d["gzip_bytes"], s["gzip_bytes"], _human_bytes)
    acc = report["accuracy"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}%"

    if "before" in acc:
        table.add_row("accuracy (eval)", pct(acc["before"]), pct(acc.get("after_prune")), "")
    if "after_finetune" in acc:
        table.add_row(f"accuracy after {report['finetune']['epochs']} epoch(s)", "", pct(acc["after_finetune"]), "")
    lat_before, lat_after = b.get("latency_ms", {}), a.get("latency_ms", {})
    for fmt, ms in lat_after.items():
        if fmt in lat_before:
            row(f"{_RUNTIMES[fmt]} fp32 ms", lat_before[fmt], ms, lambda v: f"{v:.3f}")
        else:
            table.add_row(f"{_RUNTIMES[fmt]} fp32 ms", "", f"{ms:.3f}", "")
    for fmt, sec in report.get("quantized", {}).get("formats", {}).items():
        i8 = sec["int8"]
        parity = sec["parity"].get("within_1lsb_fraction")
        table.add_row(f"{_RUNTIMES[fmt]} int8", "", f"{_human_bytes(i8['bytes'])} · {i8['latency_ms_median']:.3f} ms"
                      + (f" · {pct(i8['accuracy'])}" if "accuracy" in i8 else ""),
                      "" if parity is None else f"1 LSB {100 * parity:.1f}%")
    groups = report["groups"]
    pruned = sum(g["width_after"] < g["width_before"] for g in groups)
    skipped = [g for g in groups if g["skipped"]]
    note = (f"groups: {pruned} pruned, {len(skipped)} kept whole" +
            (f" (e.g. {skipped[0]['key']}: {skipped[0]['skipped']})" if skipped else "") + " · " if groups else "")
    note += f"onnxruntime vs torch: max rel err {report['onnx']['max_rel_diff']:.1e}"
    if report.get("sparse_speed"):
        note += "\n" + report["sparse_speed"]["note"]
    lat = report.get("latency")
    if lat:
        note += (f"\nlatency target {lat['target_ms']:.3f} ms ({lat['runtime']}, unpruned {lat['base_ms']:.3f} ms): "
                 f"table predicted {lat['predicted_ms']:.3f} ms, measured {lat['measured_ms']:.3f} ms"
                 f"{'' if lat['met'] else ' — NOT met: the table has no deeper cuts'}; final "
                 f"{lat['final_file']['file']} {lat['final_file']['ratio_to_unpruned']:.2f}× the unpruned file's "
                 "latency")
    return Group(table, Text(note, style="dim"))


def render_demo_rows(pruned: dict, unpruned: dict):
    """``compress demo``'s pruned rows beside the unpruned onnxruntime ones (accuracy, size, latency)."""
    from rich.table import Table

    from compress.pipeline import _human_bytes

    table = Table(title=f"pruned: {100 * pruned['channels_removed']:.0f}% of channels, "
                        f"{pruned['finetune_epochs']} epochs, {pruned['params_after']:,} parameters",
                  title_justify="left")
    for col in ("onnxruntime", "accuracy (eval)", "size", "latency", "vs unpruned"):
        table.add_column(col, justify="left" if col == "onnxruntime" else "right", no_wrap=True)
    for kind in ("fp32", "int8"):
        r, base = pruned[kind], unpruned[kind]
        acc = f"{100 * r['accuracy']:.2f}%" if "accuracy" in r else "–"
        table.add_row(f"pruned {kind}", acc, _human_bytes(r["bytes"]), f"{r['latency_ms_median']:.3f} ms",
                      f"size {r['bytes'] / base['bytes']:.2f}× · latency "
                      f"{r['latency_ms_median'] / base['latency_ms_median']:.2f}×")
    return table


@click.command("prune")
@click.argument("model", metavar="MODEL")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory (model.pt2, state_dict.pt, plan.json, model_fp32.onnx, report.json; "
                   "model_fp32.tflite, model_int8.onnx / .tflite as asked). Must not exist unless --force.")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Unstructured: fraction of weights set to zero by magnitude.")
@click.option("--nm", metavar="N:M", default=None, help="Semi-structured: N zeros in every M input weights (2:4, 4:8).")
@click.option("--channels", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Structured: fraction of channels physically removed from every prunable group.")
@click.option("--latency-target", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Structured, per-group cuts chosen to reach this fraction of the unpruned latency (measured "
                   "in --runtime, batch 1).")
@click.option("--latency-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="Like --latency-target, with the target in milliseconds.")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default=None,
              help="Where --latency-target measures: onnxruntime (the fp32 ONNX file), LiteRT (the fp32 TFLite "
                   "file) or torch (eager) [default: ort].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads of the --latency-target measurements [default: 1].")
@click.option("--plan", "plan_path", metavar="PLAN", type=click.Path(path_type=Path), default=None,
              help="Replay a plan.json written by compress prune onto MODEL (same architecture).")
@click.option("--global", "scope_global", is_flag=True, help="--sparsity: rank weights across all layers.")
@click.option("--criterion", type=click.Choice(CRITERION_CHOICES), default=None,
              help="Structured: channel importance; taylor needs labelled --train or --eval data [default: l1].")
@click.option("--round-to", type=click.IntRange(min=1), default=None,
              help="Structured: kept widths are multiples of this (e.g. 8) [default: 1].")
@click.option("--max-sparsity", type=click.FloatRange(0, 1), default=None,
              help="No layer (or group) loses more than this fraction [default: 1].")
@click.option("--quantize", "do_quantize", is_flag=True,
              help="Also quantize the pruned model to int8 (needs --calib): model_int8.onnx / .tflite, verified.")
@click.option("--calib", metavar="DATA", help="Calibration data for --quantize (.npz with x, or MODULE:CALLABLE).")
@click.option("--format", "formats", metavar="FORMATS", default="onnx", show_default=True,
              help="Files of the pruned model: onnx, tflite or onnx,tflite (fp32; int8 too with --quantize).")
@click.option("--skip", metavar="PATHS", default=None, help="Module paths left whole, comma-separated (fc,layer4).")
@click.option("--eval", "eval_spec", metavar="DATA", help="Labelled data: accuracy before / after in the report.")
@click.option("--train", "train_spec", metavar="DATA", help="Labelled data to fine-tune the pruned model on.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Fine-tuning epochs [default: 2].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fine-tuning learning rate [default: 1e-3].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--input-shape", metavar="N,C,H,W", help="The input shape, when neither --eval nor --train is given.")
@click.option("--arch", metavar="MODULE:CALLABLE",
              help="Builds the model a state dict is loaded into, e.g. compress.models:DemoCNN or nets.py:build.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a fully pickled model. Unpickling runs code from the file: trusted files only.")
@click.option("--force", is_flag=True, help="Replace OUTDIR if it exists (only after the new output is complete).")
@debug_option
@handle_errors
def prune_command(model: str, out: Path, sparsity, nm, channels, latency_target, latency_ms, runtime, threads,
                  plan_path, scope_global, criterion, round_to,
                  max_sparsity, do_quantize, calib, formats, skip, eval_spec, train_spec, epochs, lr, batch_size,
                  input_shape, arch, trust_pickle, force) -> None:
    """Prune MODEL: unstructured (--sparsity), N:M (--nm), structured channel removal (--channels) or
    structured to a measured latency (--latency-target / --latency-ms).

    MODEL is a state dict (.pt/.pth/.safetensors, with --arch), a torch.export program (.pt2), or a pickled
    module (.pt, only with --trust-pickle). The input comes from --eval / --train data or --input-shape.
    """
    plan = None
    if plan_path is not None:
        if any(v is not None for v in (sparsity, nm, channels, latency_target, latency_ms)):
            raise ConfigError("--plan replays a saved plan; drop --sparsity / --nm / --channels / --latency-*")
        from compress.passes.prune import load_plan

        plan = load_plan(plan_path)
        config = None
    else:
        config = _config(sparsity, nm, channels, latency_target, latency_ms, scope_global, criterion, round_to,
                         max_sparsity, skip)
        if criterion == "taylor" and train_spec is None and eval_spec is None:
            raise ConfigError("--criterion taylor scores channels by gradients: pass labelled --train (or --eval) DATA")
    if train_spec is None and (epochs is not None or lr is not None):
        raise ConfigError("--epochs and --lr set fine-tuning; add --train DATA (an .npz with x and y)")
    if do_quantize != (calib is not None):
        raise ConfigError("--quantize needs calibration data: pass --calib DATA (an .npz with x)" if do_quantize
                          else "--calib is read by --quantize only; add --quantize or drop --calib")
    formats = parse_formats(formats)
    if runtime == "litert" and "tflite" not in formats:
        formats = (*formats, "tflite")  # the latency target is checked on the file of the runtime it names
    if (runtime is not None or threads is not None) and latency_target is None and latency_ms is None:
        raise ConfigError("--runtime and --threads say where --latency-target / --latency-ms measure; add one")
    if input_shape is None and eval_spec is None and train_spec is None and calib is None:
        raise ConfigError("prune needs the model's input: pass --input-shape 1,3,224,224 or --eval / --train / "
                          "--calib DATA")
    inputs = [Path(model), *_spec_files(eval_spec), *_spec_files(train_spec), *_spec_files(arch), *_spec_files(calib),
              *([plan_path] if plan_path else [])]
    check_output_dir(out, inputs=inputs, force=force)

    from compress.io import check_fits, load_data, load_model, match_model_dtype

    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    datasets = {}
    for role, spec in (("eval", eval_spec), ("train", train_spec), ("calib", calib)):
        if spec is not None:
            datasets[role] = match_model_dtype(net, load_data(spec))
            outputs = check_fits(net, datasets[role])
            if role == "calib":
                continue
            check_labels(datasets[role], outputs, f"--{role}")
            if datasets[role].y is None:
                raise ConfigError(f"--{role} needs labels: pass an .npz with both x and y")
    example, batches = _example(net, datasets, input_shape)
    measure = None
    if config is not None and config.latency is not None:
        from compress.passes.prune import TorchLatency

        measure = {None: OrtLatency, "ort": OrtLatency, "litert": LiteRTLatency, "torch": TorchLatency}[runtime](
            threads or 1)

    with staged_output(out, kind="prune") as staging:
        report = run_prune(net, example, batches, config, plan, datasets, staging, epochs=epochs or 2,
                           lr=lr or 1e-3, batch_size=batch_size, formats=formats, calib=datasets.get("calib"),
                           measure=measure)
        report = finish_report(report, staging, out)

    console = stdout_console()
    console.print(render(report))
    written = ", ".join(f"{p.name} ({p.stat().st_size / 1024:.1f} kB)" for p in sorted(out.iterdir())
                        if p.is_file() and not p.name.startswith("."))
    console.print(f"wrote {out}: {written}", soft_wrap=True, highlight=False)
