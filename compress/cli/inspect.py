"""``compress inspect MODEL``: the layers of a model, its size, and what the quantizer will do with each."""

from __future__ import annotations

from collections import Counter

import click

from compress.cli._common import debug_option, handle_errors, parse_shape, stdout_console


def _support_lookup():
    """``module -> what the quantizer does with it`` (rich markup), read from the op registry."""
    from compress.ops.verdict import verdict_for_module

    def lookup(module) -> str:
        text = verdict_for_module(module)
        return f"[yellow]{text}[/]" if "float" in text or "mapping" in text else text

    return lookup


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
@click.option("--input-shape", metavar="N,C,H,W", help="Run a zero input of this shape to show output shapes.")
@debug_option
@handle_errors
def inspect_command(model: str, arch: str | None, trust_pickle: bool, input_shape: str | None) -> None:
    """Print MODEL's layers, parameter counts and which layers the quantizer converts to int8."""
    import numpy as np
    from rich.table import Table

    from compress.io import Dataset, check_fits, load_model

    shape = parse_shape(input_shape) if input_shape else None
    net = load_model(model, arch=arch, trust_pickle=trust_pickle)
    leaves = [(name, m) for name, m in net.named_modules()
              if name and (not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False)))]

    out_shapes: dict[str, str] = {}
    if shape is not None:
        def record(name):
            def hook(_module, _inputs, output):
                if hasattr(output, "shape"):
                    out_shapes[name] = "[" + ", ".join(str(d) for d in output.shape) + "]"
            return hook

        handles = [m.register_forward_hook(record(name)) for name, m in leaves]
        try:
            check_fits(net, Dataset(np.zeros(shape, np.float32), source=f"--input-shape {input_shape}"),
                       max_samples=shape[0])
        finally:
            for h in handles:
                h.remove()

    lookup = _support_lookup()
    table = Table(title=f"{type(net).__name__} ({model})", title_justify="left")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("params", justify="right")
    if shape is not None:
        table.add_column("output shape")
    table.add_column("int8 as")
    for name, m in leaves:
        n_params = sum(p.numel() for p in m.parameters(recurse=False))
        support = "?" if lookup is None else lookup(m)
        row = [name, type(m).__name__, f"{n_params:,}"]
        if shape is not None:
            row.append(out_shapes.get(name, "–"))
        table.add_row(*row, support)

    console = stdout_console()
    console.print(table)
    total = sum(p.numel() for p in net.parameters())
    fp32_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    console.print(f"parameters: {total:,} ({fp32_bytes / 1024:.1f} kB as stored)", highlight=False)
    ops = _functional_ops(net)
    if ops:
        listed = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in sorted(ops.items()))
        console.print(f"functional ops in forward: {listed}", highlight=False, soft_wrap=True)
    if lookup is None:
        console.print("quantizer support table unavailable in this build (compress.layers.registry missing)",
                      style="yellow", soft_wrap=True)
    else:
        console.print("Quant* = int8 weights and outputs; 'int8 output' = float op with a quantized output; "
                      "'int8 passthrough' = runs on int8 values as they are; 'stays float' = listed in "
                      "report.json's float_ops", highlight=False, soft_wrap=True)
