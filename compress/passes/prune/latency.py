"""Latency-driven structured pruning: a measured per-group latency table, a search over it, a measured check.

Counting MACs does not predict latency (a runtime's kernels are faster at some widths than others, and small
layers are bound by overheads), so the table is *measured*: the unpruned model, then the model with one
group cut by each of ``LatencyTarget.steps``, one group at a time, each timed by ``measure`` (batch 1). The
search assumes the savings of different groups add up, and picks one step (or none) per group so that the
predicted latency meets the target at the least importance lost (an exact multiple-choice knapsack). Savings do not add up
exactly (a conv whose input and output groups are both cut shrinks by the product), so the chosen model is
measured; when it misses the target by more than ``tolerance`` the search re-plans with the predicted saving
corrected by the ratio measured / predicted, up to ``max_rounds`` times, and keeps the best measured result.

Importance lost by a step is the score (``criterion``'s) of the channels it removes, divided by the group's
mean channel score (:func:`_loss`).

The table depends only on shapes, the runtime and the machine, so it is cached as JSON under
``$COMPRESS_CACHE_DIR`` (default ``~/.cache/compress``)``/prune-latency/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from compress.passes.prune.config import LatencyTarget, PruneConfig
from compress.passes.prune.groups import ChannelGraph
from compress.passes.prune.structured import kept_count, ranked, remove_channels, skip_reason

TABLE_VERSION = 1
NOISE_FLOOR = 0.01  # table differences below 1 % of the base latency are within the timing noise here
BINS = 200  # resolution of the search's savings: 0.5 % of the needed saving


@dataclass(frozen=True)
class TorchLatency:
    """``measure`` for :func:`search`: eager latency of the module in torch, batch 1, on ``threads``.

    A measure has a ``name`` (part of the latency table's cache key), ``runner(model, example_inputs)``
    returning a zero-argument callable that runs one batch-1 inference, and ``pinned()``, a context the
    timing runs in. The CLI's onnxruntime measure has the same three members.
    """

    threads: int = 1

    @property
    def name(self) -> str:
        return f"torch-{torch.__version__}-{self.threads}t"

    def runner(self, model: nn.Module, example_inputs: tuple) -> Callable[[], object]:
        x = tuple(t[:1] for t in example_inputs)

        def run():
            with torch.no_grad():
                return model(*x)

        return run

    @contextmanager
    def pinned(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 5, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds over at least ``runs`` calls and ``min_seconds`` of
    timing, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_interleaved(runners: list[Callable[[], object]], *, pinned=None, rounds: int = 9,
                     seconds: float = 0.02) -> list[float]:
    """Latency (ms) of each runner: per round every runner's median over ``seconds`` of calls, interleaved;
    then the fastest round per runner.

    Other processes on a shared machine slow whole stretches of time; interleaving spreads that over all
    runners alike, and the fastest round is the one least disturbed (a model's own time does not vary).
    """
    best = [float("inf")] * len(runners)
    with pinned if pinned is not None else nullcontext():
        for _ in range(rounds):
            for i, run in enumerate(runners):
                best[i] = min(best[i], median_ms(run, 5, warmup=2, min_seconds=seconds))
    return best


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path(key: str) -> Path:
    root = Path(os.environ.get("COMPRESS_CACHE_DIR") or Path.home() / ".cache" / "compress")
    return root / "prune-latency" / f"{key}.json"


def _cut(gm: fx.GraphModule, graph: ChannelGraph, kept: dict[int, list[int] | None]) -> fx.GraphModule:
    pruned = copy.deepcopy(gm)
    remove_channels(pruned, graph, kept)
    return pruned


def _candidates(graph: ChannelGraph, config: PruneConfig) -> dict[int, list[tuple[float, int]]]:
    """Per prunable group: (step, kept width) for every step that removes something (``round_to`` applied)."""
    out = {}
    for g in graph.groups:
        if g.blocked or skip_reason(g, config):
            continue
        widths = {}
        for r in config.latency.steps:
            n = kept_count(g.size, r, config)
            if n < g.size:
                widths.setdefault(n, r)  # two steps rounding to one width: measure it once
        if widths:
            out[g.id] = sorted(((r, n) for n, r in widths.items()), key=lambda t: t[0])
    return out


def latency_table(gm: fx.GraphModule, graph: ChannelGraph, example_inputs: tuple, config: PruneConfig,
                  measure) -> dict:
    """Measure (or read from the cache) the latency of the model with each group cut alone by each step.

    Returns ``{"base_ms", "rows": {group key: [{"ratio", "width", "ms"}, ...]}, "runtime", "cpu", "cached"}``.
    All variants are timed interleaved with the unpruned model (:func:`time_interleaved`), so that drift of
    a busy machine does not land in one group's figures.
    """
    candidates = _candidates(graph, config)
    by_id = {g.id: g for g in graph.groups}
    shapes = [list(t.shape) for t in example_inputs]
    fingerprint = {"v": TABLE_VERSION, "runtime": measure.name, "cpu": _cpu(), "inputs": shapes,
                   "groups": [[by_id[gid].key, by_id[gid].size, [n for _, n in steps]]
                              for gid, steps in sorted(candidates.items())],
                   "modules": sorted((k, list(v.shape)) for k, v in gm.state_dict().items())}
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_path(key)
    if path.is_file():
        try:
            table = json.loads(path.read_text())
            return {**table, "cached": True}
        except ValueError:
            pass  # a torn write: measure again
    entries = [(None, None, None)] + [(by_id[gid].key, r, n) for gid, steps in sorted(candidates.items())
                                      for r, n in steps]
    # latency depends on the widths, not on which channels are kept: cut the first n
    runners = [measure.runner(gm, example_inputs) if key is None else
               measure.runner(_cut(gm, graph, {by_key(graph, key): list(range(n))}), example_inputs)
               for key, _, n in entries]
    times = time_interleaved(runners, pinned=measure.pinned())
    rows: dict[str, list[dict]] = {}
    for (key, r, n), ms in zip(entries[1:], times[1:], strict=True):
        rows.setdefault(key, []).append({"ratio": r, "width": n, "ms": ms})
    table = {"version": TABLE_VERSION, "runtime": measure.name, "cpu": fingerprint["cpu"], "inputs": shapes,
             "base_ms": times[0], "rows": rows}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: the table is only not cached
    return {**table, "cached": False}


def _loss(scores: torch.Tensor, n: int) -> float:
    """Importance a cut to ``n`` channels removes, in units of the group's mean channel score.

    Normalising by the group's mean makes groups comparable (as a global ranking with per-group normalised
    scores does), and since the removed channels are a group's weakest, cutting a little from several groups
    costs less than cutting one group deeply.
    """
    mean = float(scores.mean())
    if mean <= 0:
        return float(len(scores) - n)
    removed = float(scores.sum()) - float(scores[ranked(scores, n)].sum())
    return removed / mean


def _choose(options: dict[int, list[tuple[float, float, int]]], saving: float, floor: float) -> dict[int, int]:
    """An option index per group (−1: uncut) whose savings sum to ≥ ``saving`` at the least importance lost.

    ``options[g]`` lists (saved ms, importance lost, width). A multiple-choice knapsack, solved exactly over
    savings counted in 1/``BINS`` of the goal and rounded down (so a solution's true saving is never below
    the goal). Options saving less than ``floor`` ms are measurement noise, not savings, and are never taken.
    When no combination reaches the goal, every group takes its largest saving.
    """
    usable = {g: [(i, o) for i, o in enumerate(opts) if o[0] >= floor] for g, opts in options.items()}
    if saving <= 0:
        return {g: -1 for g in options}
    unit = saving / BINS
    # best[b] = (importance lost, choices) reaching b bins of saving (b = BINS: the goal or more)
    best: dict[int, tuple[float, dict[int, int]]] = {0: (0.0, {})}
    for g, opts in usable.items():
        nxt = dict(best)
        for b, (loss, chosen) in best.items():
            for i, (save, cost, _) in opts:
                nb = min(BINS, b + int(save / unit))
                cand = (loss + cost, {**chosen, g: i})
                if nb not in nxt or cand[0] < nxt[nb][0]:
                    nxt[nb] = cand
        best = nxt
    if BINS in best:
        chosen = best[BINS][1]
    else:
        chosen = {g: max(opts, key=lambda t: t[1][0])[0] for g, opts in usable.items() if opts}
    return {g: chosen.get(g, -1) for g in options}


def search(gm: fx.GraphModule, graph: ChannelGraph, example_inputs: tuple, config: PruneConfig,
           scores: dict[int, torch.Tensor], measure=None) -> tuple[dict[int, list[int] | None], dict]:
    """Kept channels per group meeting ``config.latency`` as measured by ``measure``, and the latency report.

    The report holds the target, the predicted and measured latency of the result, every round of the
    search, and the table.
    """
    target: LatencyTarget = config.latency
    measure = measure or TorchLatency()
    table = latency_table(gm, graph, example_inputs, config, measure)
    base = table["base_ms"]
    goal = target.target_ms(base)
    by_key = {g.key: g for g in graph.groups}
    options = {}
    for key, rows in table["rows"].items():
        g = by_key[key]
        options[g.id] = [(base - row["ms"], _loss(scores[g.id], row["width"]), row["width"]) for row in rows]
    needed = base - goal
    wanted, rounds, best, previous = needed, [], None, None
    for _ in range(target.max_rounds):
        choice = _choose(options, wanted, NOISE_FLOOR * base)
        if choice == previous:
            break  # the corrected target asks for what the table cannot give: no new candidate
        previous = choice
        kept = {gid: None if i < 0 else ranked(scores[gid], options[gid][i][2]) for gid, i in choice.items()}
        predicted = base - sum(options[gid][i][0] for gid, i in choice.items() if i >= 0)
        loss = sum(options[gid][i][1] for gid, i in choice.items() if i >= 0)
        # timed beside the unpruned model: a fraction target compares like with like in the same rounds
        base_now, measured = time_interleaved([measure.runner(gm, example_inputs),
                                               measure.runner(_cut(gm, graph, kept), example_inputs)],
                                              pinned=measure.pinned())
        if target.fraction is not None:
            measured *= base / base_now  # on the table's scale
        rounds.append({"predicted_ms": predicted, "measured_ms": measured, "importance_lost": loss,
                       "widths": {by_key_id(graph, gid): options[gid][i][2] for gid, i in choice.items() if i >= 0}})
        # 2: within ±tolerance of the goal; 1: faster than that (more cut than needed); 0: too slow
        status = 2 if abs(measured - goal) <= target.tolerance * goal else int(measured < goal)
        rank = (status, -loss if status else -measured)
        if best is None or rank > best[0]:
            best = (rank, kept, measured, loss, predicted)
        if status == 2:
            break
        realised = (base - measured) / max(base - predicted, 1e-9)  # the share of the predicted saving measured
        if realised <= 0:
            break
        new_wanted = needed / realised
        if abs(new_wanted - wanted) <= 1e-3 * wanted:
            break
        wanted = new_wanted
    (status, _), kept, measured, loss, predicted = best
    meets = status == 2 or measured <= goal * (1 + target.tolerance)
    report = {"runtime": table["runtime"], "cpu": table["cpu"], "base_ms": base, "target_ms": goal,
              "predicted_ms": predicted, "measured_ms": measured, "met": meets, "importance_lost": loss,
              "rounds": rounds, "table_cached": table["cached"], "table": table["rows"]}
    if target.fraction is not None:
        report["target_fraction"] = target.fraction
    return kept, report


def by_key_id(graph: ChannelGraph, gid: int) -> str:
    return next(g.key for g in graph.groups if g.id == gid)


def by_key(graph: ChannelGraph, key: str) -> int:
    return next(g.id for g in graph.groups if g.key == key)


__all__ = ["TorchLatency", "latency_table", "median_ms", "search", "time_interleaved"]
