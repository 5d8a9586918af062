"""``prune(model, example_inputs, PruneConfig(...)) -> PruneResult``: the pruning pass, its plan and saving.

Structured mode works on the captured graph (:func:`compress.capture.capture`) and returns that graph module
with physically smaller tensors; unstructured and N:M modes mask the model's own weights in place (call
:func:`compress.layers.prune.finalize` after fine-tuning). Either way the returned plan is JSON and
:func:`apply_plan` replays it onto a fresh copy of the same architecture.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.errors import ConfigError
from compress.passes.prune.config import STRUCTURED, Criterion, Mode, PruneConfig
from compress.passes.prune.groups import ChannelGraph, analyze
from compress.passes.prune.magnitude import magnitude_masks, nm_masks
from compress.passes.prune.structured import choose_channels, group_scores, remove_channels, skip_reason

PLAN_VERSION = 1


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        model: structured mode: the captured graph module with smaller tensors; unstructured / N:M: the
            input model, masked in place.
        plan: JSON-ready dict (``save_plan`` / ``apply_plan``): the config, and per group the kept channel
            indices and the reason a group was left whole; per tensor the sparsity for masks.
    """

    model: nn.Module
    plan: dict


def _as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,)


def prune(model: nn.Module, example_inputs, config: PruneConfig, *, data=None, measure=None) -> PruneResult:
    """Prune ``model`` as ``config`` says.

    Args:
        model: a float ``nn.Module`` (eval mode is used for capture; the model itself is not modified in
            structured mode).
        example_inputs: a tensor or tuple the model runs on (use a batch of 2 or more: capture keeps the
            batch dimension dynamic).
        config: the mode (``sparsity``, ``nm``, ``channels`` or ``latency``) and its options.
        data: labelled batches ``[(x, y), ...]`` or a labelled :class:`compress.io.Dataset`, for
            ``criterion="taylor"`` (the first ``config.taylor_batches`` batches are used).
        measure: latency mode — ``measure(model, example_inputs) -> ms`` with a ``name`` (the table's cache
            key); default :class:`compress.passes.prune.latency.TorchLatency` (torch, 1 thread).

    Returns:
        :class:`PruneResult` with the pruned model and the replayable plan.

    Raises:
        CaptureError: structured mode on a model ``torch.export`` cannot capture.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
        >>> x = torch.randn(2, 3, 8, 8)
        >>> result = prune(net, x, PruneConfig(channels=0.5))
        >>> result.model.get_submodule("0").out_channels, [g["width_after"] for g in result.plan["groups"]]
        (8, [8, 4])
    """
    example_inputs = _as_tuple(example_inputs)
    if config.mode in STRUCTURED:
        from compress.capture import capture

        gm = capture(copy.deepcopy(model).eval(), example_inputs)
        graph = analyze(gm, example_inputs)
        scores = group_scores(gm, graph, config.criterion, data, config.taylor_batches)
        latency = None
        if config.mode is Mode.LATENCY:
            from compress.passes.prune.latency import search

            kept, latency = search(gm, graph, example_inputs, config, scores, measure)
        else:
            kept = choose_channels(gm, graph, config, scores)
        remove_channels(gm, graph, kept)
        plan = _channel_plan(graph, kept, config)
        if latency is not None:
            plan["latency"] = latency
        return PruneResult(gm, plan)
    if config.criterion is Criterion.TAYLOR:
        raise ConfigError("criterion taylor scores channels: use it with channels=… or latency=…")
    rows = magnitude_masks(model, config, config.schedule.sparsity_at(0, config.sparsity)) \
        if config.mode is Mode.UNSTRUCTURED else nm_masks(model, config)
    return PruneResult(model, {"version": PLAN_VERSION, "mode": config.mode.value, "config": config.to_dict(),
                               "tensors": rows})


def _channel_plan(graph: ChannelGraph, kept: dict, config: PruneConfig) -> dict:
    groups = []
    for g in graph.groups:
        reason = "; ".join(g.blocked) if g.blocked else skip_reason(g, config)
        idx = kept.get(g.id)
        groups.append({
            "key": g.key, "producers": sorted(g.producers), "width_before": g.size,
            "width_after": g.size if idx is None else len(idx), "kept": idx,
            "skipped": reason if idx is None and reason else None,
            **({"unit": g.unit} if g.unit > 1 else {}),  # attention heads: widths count heads of `unit` columns
        })
    return {"version": PLAN_VERSION, "mode": config.mode.value, "config": config.to_dict(), "groups": groups}


def apply_plan(model: nn.Module, example_inputs, plan: dict) -> PruneResult:
    """Replay ``plan`` (from :func:`prune`, or ``plan.json``) onto a fresh ``model`` of the same architecture.

    Structured plans are matched group by group through their producers' module paths; mask plans recompute
    the masks with the plan's config (magnitudes are the new model's).

    Raises:
        ConfigError: the plan's version is unknown, or its groups do not exist in ``model`` (another
            architecture).
    """
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION:
        raise ConfigError(f"unknown pruning plan version {plan.get('version') if isinstance(plan, dict) else plan!r}; "
                          f"this compress reads version {PLAN_VERSION} (plan.json written by compress prune)")
    config = PruneConfig.from_dict(plan["config"])
    example_inputs = _as_tuple(example_inputs)
    if plan.get("mode") not in {m.value for m in STRUCTURED}:
        return prune(model, example_inputs, config)
    from compress.capture import capture

    gm = capture(copy.deepcopy(model).eval(), example_inputs)
    graph = analyze(gm, example_inputs)
    by_key = {g.key: g for g in graph.groups}
    kept: dict[int, list[int] | None] = {}
    for entry in plan["groups"]:
        g = by_key.get(entry["key"])
        if g is None or g.size != entry["width_before"]:
            raise ConfigError(f"plan.json does not fit this model: no group of {entry['width_before']} channels "
                              f"produced by {entry['key']}; was the plan made for another --arch?")
        if entry["kept"] is not None:
            if g.blocked:
                raise ConfigError(f"plan.json prunes group {entry['key']}, which this model cannot prune "
                                  f"({'; '.join(g.blocked)})")
            kept[g.id] = list(entry["kept"])
    remove_channels(gm, graph, kept)
    return PruneResult(gm, plan)


def save_plan(plan: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(plan, indent=1) + "\n")


def load_plan(path: str | Path) -> dict:
    """Read a plan.json; a missing or unreadable file raises :class:`ConfigError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read pruning plan {path}: {exc}; pass the plan.json compress prune wrote") from exc


def export_program(model: nn.Module, example_inputs) -> torch.export.ExportedProgram:
    """The pruned model as a ``torch.export`` program with a dynamic batch (what ``model.pt2`` holds)."""
    example_inputs = _as_tuple(example_inputs)
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None for t in example_inputs)
    model = model.eval()
    try:
        return torch.export.export(model, example_inputs, dynamic_shapes=shapes)
    except Exception:  # a graph whose code fixes the batch (a view with a literal size) exports static
        return torch.export.export(model, example_inputs)


def save_pruned(model: nn.Module, example_inputs, plan: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``model.pt2`` (torch.export), ``state_dict.pt`` and ``plan.json`` into ``out_dir``.

    ``compress quantize|export|bench model.pt2`` load the program without ``--arch``.
    """
    out_dir = Path(out_dir)
    paths = {"pt2": out_dir / "model.pt2", "state_dict": out_dir / "state_dict.pt", "plan": out_dir / "plan.json"}
    torch.export.save(export_program(model, example_inputs), str(paths["pt2"]))
    torch.save(model.state_dict(), paths["state_dict"])
    save_plan(plan, paths["plan"])
    return paths


__all__ = ["PruneResult", "apply_plan", "export_program", "load_plan", "prune", "save_plan", "save_pruned"]
