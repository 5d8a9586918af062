"""``compress inspect MODEL``: the layers of a model, its size, and what the quantizer will do with each."""

from __future__ import annotations

from collections import Counter

import click

from compress.cli._common import (
    check_labels,
    debug_option,
    handle_errors,
    parse_shape,
    progress_enabled,
    stdout_console,
)
from compress.errors import ConfigError


def _markup(text: str) -> str:
    return f"[yellow]{text}[/]" if "float" in text or "mapping" in text else text


def _module_verdicts(net, example) -> tuple[dict[str, str], list]:
    """``module path -> verdict`` read off ``prepare()``'s graph (what quantization really does), and its rows.

    Without an example input there is no graph: each module gets the registry's verdict for its type instead.
    """
    from compress.passes import describe, prepare

    if example is None:
        return {}, []
    rows = describe(prepare(net, example))
    by_module: dict[str, list[str]] = {}
    for row in rows:
        by_module.setdefault(row.module, [])
        if row.verdict not in by_module[row.module]:
            by_module[row.module].append(row.verdict)
    return {path: "; ".join(v) for path, v in by_module.items()}, rows


def _functional_ops(model) -> Counter | None:
    """Functions / methods called in forward (``add``, ``flatten``...) when torch.fx can trace the model."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # untraceable control flow: the quantizer reports these ops itself
        return None
    ops: Counter = Counter()
    for node in graph.nodes:
        if node.op == "call_function":
            ops[getattr(node.target, "__name__", str(node.target))] += 1
        elif node.op == "call_method":
            ops[f".{node.target}()"] += 1
    return ops


@click.command("inspect")
@click.argument("model", metavar="MODEL")
@click.option("--arch", metavar="MODULE:CALLABLE", help="Builds the model a state dict is loaded into.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a fully pickled model. Unpickling runs code from the file: trusted files only.")
@click.option("--input-shape", metavar="N,C,H,W",
              help="Run a zero input of this shape: output shapes, and the ops as quantization captures them.")
@click.option("--sample", "sample", metavar="DATA",
              help="Like --input-shape, with the first sample of DATA (.npz or MODULE:CALLABLE), e.g. token ids.")
@click.option("--sensitivity", is_flag=True,
              help="Measure what int8 costs each layer (needs --calib) and print the per-layer table and the "
                   "modes `compress quantize --max-drop` would choose; writes nothing.")
@click.option("--calib", metavar="DATA", help="Calibration data for --sensitivity.")
@click.option("--eval", "eval_spec", metavar="DATA", help="Data the --sensitivity metric is measured on (labels y "
              "for accuracy) [default: --calib].")
@click.option("--metric", metavar="NAME|MODULE:CALLABLE", help="Metric of --sensitivity, as in `compress quantize`.")
@click.option("--max-drop", "max_drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="POINTS", help="Budget of --sensitivity's plan, in percentage points.")
@debug_option
@handle_errors
def inspect_command(model: str, arch: str | None, trust_pickle: bool, input_shape: str | None,
                    sample: str | None, sensitivity: bool, calib: str | None, eval_spec: str | None,
                    metric: str | None, max_drop: float) -> None:
    """Print MODEL's layers, parameter counts and what quantization does with each (int8 or float, per format).

    With --input-shape or --sample the model is captured exactly as `compress quantize` captures it, and a
    second table lists every op of the captured graph with its int8 / float verdict for ONNX and TFLite.
    """
    import numpy as np
    import torch
    from rich.table import Table

    from compress.io import Dataset, check_fits, load_data, load_model, match_model_dtype
    from compress.ops.verdict import verdict_for_module

    if sensitivity and calib is None:
        raise ConfigError("--sensitivity needs calibration data; pass --calib DATA (and --eval DATA with labels)")
    if not sensitivity and (calib or eval_spec or metric):
        raise ConfigError("--calib, --eval and --metric apply to --sensitivity; add --sensitivity")
    shape = parse_shape(input_shape) if input_shape else None
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    leaves = [(name, m) for name, m in net.named_modules()
              if name and (not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)))]

    data = None
    if sample is not None:
        data = match_model_dtype(net, load_data(sample).take(2))
    elif shape is not None:
        data = match_model_dtype(net, Dataset(np.zeros(shape, np.float32), source=f"--input-shape {input_shape}"))
    out_shapes: dict[str, str] = {}
    if data is not None:
        def record(name):
            def hook(_module, _inputs, output):
                if hasattr(output, "shape"):
                    out_shapes[name] = "[" + ", ".join(str(d) for d in output.shape) + "]"
            return hook

        handles = [m.register_forward_hook(record(name)) for name, m in leaves]
        try:
            check_fits(net, data, max_samples=len(data))
        finally:
            for h in handles:
                h.remove()
    example = data.example(1) if data is not None else None  # every input, in forward's order
    captured, rows = _module_verdicts(net, example)

    table = Table(title=f"{type(net).__name__} ({model})", title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("params", justify="right")
    if data is not None:
        table.add_column("output shape")
    table.add_column("int8 as")
    for name, m in leaves:
        n_params = sum(p.numel() for p in m.parameters(recurse=False))
        if name in captured:
            support = captured[name]
        elif rows and isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            support = "folded into conv"
        elif rows:
            support = "not in the captured graph (identity at inference)"
        else:
            support = verdict_for_module(m)
        row = [name, type(m).__name__, f"{n_params:,}"]
        if data is not None:
            row.append(out_shapes.get(name, "–"))
        table.add_row(*row, _markup(support))

    console = stdout_console()
    console.print(table)
    total = sum(p.numel() for p in net.parameters())
    fp32_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    console.print(f"parameters: {total:,} ({fp32_bytes / 1024:.1f} kB as stored)", highlight=False)
    if rows:
        ops_table = Table(title="ops of the captured graph (as `compress quantize` sees them)", title_justify="left")
        for col in ("op", "count", "int8 as", "first at"):
            ops_table.add_column(col, justify="right" if col == "count" else "left")
        grouped: dict[tuple[str, str], list] = {}
        for r in rows:
            grouped.setdefault((r.label, r.verdict), []).append(r)
        for (label, text), members in grouped.items():
            first = members[0]
            ops_table.add_row(label, str(len(members)), _markup(text), first.source or first.module or first.node)
        console.print(ops_table)
    else:
        ops = _functional_ops(net)
        if ops:
            listed = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in sorted(ops.items()))
            console.print(f"functional ops in forward: {listed}", highlight=False, soft_wrap=True)
        console.print("pass --input-shape or --sample to capture the model and see every op's verdict",
                      highlight=False, soft_wrap=True)
    console.print("Quant* = int8 weights and outputs; 'int8 output' = an int8 kernel with its own output grid; "
                  "'int8 passthrough' = moves int8 values as they are; 'float in X' = computed in float between "
                  "dequantize and quantize in format X (listed in report.json's float_ops); 'no X mapping' = "
                  "`compress quantize --format X` refuses the model", highlight=False, soft_wrap=True)
    if sensitivity:
        from compress.passes.sensitivity import plan_layer_modes, render_sensitivity, sensitivity_config

        config = sensitivity_config(max_drop, metric)
        sets = {role: match_model_dtype(net, load_data(spec)) for role, spec in (("calib", calib), ("eval", eval_spec))
                if spec is not None}
        for role, ds in sets.items():
            check_labels(ds, check_fits(net, ds), f"--{role}")
        result = plan_layer_modes(net, sets["calib"], sets.get("eval", sets["calib"]), config=config,
                                  progress=progress_enabled())
        console.print(render_sensitivity(result.to_dict()))
