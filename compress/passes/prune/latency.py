"""Latency-driven structured pruning: a measured per-group latency table, a search over it, a measured check.

Counting MACs does not predict latency (a runtime's kernels are faster at some widths than others, and small
layers are bound by overheads), so the table is *measured*: the unpruned model, then the model with one
group cut by each of ``LatencyTarget.steps``, one group at a time, each timed by ``measure`` (batch 1), all
interleaved in the same rounds. A row is the median over rounds of the cut's time divided by the unpruned
model's time *in the same round*: a shared machine's load slows a whole round, and a ratio cancels it where
a difference of absolute times does not (on 2 cores at load 2–12, differences summed past the base and
predicted a negative latency). Cuts within :data:`NOISE_FLOOR` of the base save nothing.

A plan's predicted latency is the base times the product of its cuts' fractions, which cannot go below zero
and is exact when a cut scales a share of the time; the search picks one step (or none) per group so that the
prediction meets the target at the least importance lost (an exact multiple-choice knapsack over −ln of the
fractions). Cuts interact (a conv whose input and output groups are both cut shrinks by the product), so the
chosen model is measured beside the unpruned one; when it misses the target by more than ``tolerance`` the
search re-plans with the goal refitted from every plan measured so far, up to ``max_rounds`` (twice that while
the miss is over twice the tolerance), and keeps the best measured plan. Every round's predicted and measured
latency is in the report.

Importance lost by a step is the score (``criterion``'s) of the channels it removes, divided by the group's
mean channel score (:func:`_loss`).

The table depends only on shapes, the runtime and the machine, so it is cached as JSON under
``$COMPRESS_CACHE_DIR`` (default ``~/.cache/compress``)``/prune-latency/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
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

TABLE_VERSION = 2  # 2: rows carry of_base, the median of per-round ratios to the unpruned model
NOISE_FLOOR = 0.01  # a cut measured < 1 % faster than the unpruned model is within the timing noise here: 0
BINS = 200  # resolution of the search's savings: 0.5 % of the needed saving
TABLE_ROUNDS = 9  # interleaved rounds of the table (every variant beside the unpruned model in each)
CHECK_ROUNDS = 15  # rounds of a plan's check: two models only, so more rounds cost little and halve the noise


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


def time_rounds(runners: list[Callable[[], object]], *, pinned=None, rounds: int = 9,
                seconds: float = 0.02) -> list[list[float]]:
    """Per-round latency (ms) of each runner: ``out[round][runner]``, each the median over ``seconds`` of calls,
    the runners interleaved within every round.

    Example:
        >>> [[round(t) for t in row] for row in time_rounds([lambda: None], rounds=2, seconds=0.0)]
        [[0], [0]]
    """
    out = []
    order = list(range(len(runners)))
    with pinned if pinned is not None else nullcontext():
        for k in range(rounds):
            # every other round in reverse order: a load rising or falling through a round then favours
            # no runner over the rounds (first and last swap places)
            row = [0.0] * len(runners)
            for i in order if k % 2 == 0 else order[::-1]:
                row[i] = median_ms(runners[i], 5, warmup=2, min_seconds=seconds)
            out.append(row)
    return out


def time_interleaved(runners: list[Callable[[], object]], *, pinned=None, rounds: int = 9,
                     seconds: float = 0.02) -> list[float]:
    """Latency (ms) of each runner: the fastest of its :func:`time_rounds`.

    Other processes on a shared machine slow whole stretches of time; interleaving spreads that over all
    runners alike, and the fastest round is the one least disturbed (a model's own time does not vary).
    """
    per_round = time_rounds(runners, pinned=pinned, rounds=rounds, seconds=seconds)
    return [min(r[i] for r in per_round) for i in range(len(runners))]


def ratios_to_first(per_round: list[list[float]]) -> list[float]:
    """Each runner's latency as a fraction of runner 0's: the median over rounds of ``t_i / t_0`` in the
    same round.

    A busy machine slows whole rounds, and the ratio of two runs timed side by side cancels that, where the
    difference of two fastest rounds (taken in different rounds) does not: on 2 shared cores at load 2–12
    such differences summed past the base latency (a negative prediction).
    """
    return [statistics.median(r[i] / r[0] for r in per_round) for i in range(len(per_round[0]))]


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
    All variants are timed interleaved with the unpruned model in the same rounds (:func:`time_rounds`), and
    each row's ``of_base`` is the median of its per-round ratios to the unpruned model (:func:`ratios_to_first`),
    so that a busy machine's drift lands in no row; ``ms`` is ``of_base`` times ``base_ms`` (the unpruned
    model's fastest round).
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
    per_round = time_rounds(runners, pinned=measure.pinned(), rounds=TABLE_ROUNDS)
    base = min(r[0] for r in per_round)
    rows: dict[str, list[dict]] = {}
    for (key, r, n), rel in zip(entries[1:], ratios_to_first(per_round)[1:], strict=True):
        rows.setdefault(key, []).append({"ratio": r, "width": n, "of_base": rel, "ms": rel * base})
    table = {"version": TABLE_VERSION, "runtime": measure.name, "cpu": fingerprint["cpu"], "inputs": shapes,
             "base_ms": base, "rounds": TABLE_ROUNDS, "rows": rows}
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


def _choose(options: dict[int, list[tuple[float, float, int]]], saving: float, floor: float,
            most: float | None = None) -> dict[int, int]:
    """An option index per group (−1: uncut) whose savings sum to ≥ ``saving`` at the least importance lost.

    ``options[g]`` lists (saving, importance lost, width). A multiple-choice knapsack, solved exactly over
    savings counted in 1/``BINS`` of the goal and rounded down (so a solution's true saving is never below
    the goal). Options saving less than ``floor`` are measurement noise, not savings, and are never taken.
    With ``most``, combinations saving more than that are not considered (a plan far faster than the target
    misses it too), unless none saving between ``saving`` and ``most`` exists. When no combination reaches
    the goal, every group takes its largest saving.
    """
    usable = {g: [(i, o) for i, o in enumerate(opts) if o[0] >= floor] for g, opts in options.items()}
    if saving <= 0:
        return {g: -1 for g in options}
    unit = saving / BINS
    top = BINS if most is None else max(BINS, int(most / unit))
    # best[b] = (importance lost, choices) reaching b bins of saving (b = top: that or more, when unbounded)
    best: dict[int, tuple[float, dict[int, int]]] = {0: (0.0, {})}
    for g, opts in usable.items():
        nxt = dict(best)
        for b, (loss, chosen) in best.items():
            for i, (save, cost, _) in opts:
                nb = b + int(save / unit)
                if most is None:
                    nb = min(BINS, nb)
                elif nb > top:
                    continue
                cand = (loss + cost, {**chosen, g: i})
                if nb not in nxt or cand[0] < nxt[nb][0]:
                    nxt[nb] = cand
        best = nxt
    reached = [v for b, v in best.items() if b >= BINS]
    if reached:
        chosen = min(reached, key=lambda v: v[0])[1]
    elif most is not None:
        return _choose(options, saving, floor)
    else:
        chosen = {g: max(opts, key=lambda t: t[1][0])[0] for g, opts in usable.items() if opts}
    return {g: chosen.get(g, -1) for g in options}


def _options(table: dict, graph: ChannelGraph, scores: dict[int, torch.Tensor]) -> dict[int, list[tuple]]:
    """Per group: (saving, importance lost, width) per step, the saving in the multiplicative model's units,
    −ln(fraction of the unpruned latency left).

    A cut measured within :data:`NOISE_FLOOR` of the unpruned model saves 0, and a deeper cut of a group
    never saves less than a shallower one (its measured fraction is the running minimum): both are timing
    noise, not what the runtime does.
    """
    by_key = {g.key: g for g in graph.groups}
    options = {}
    for key, rows in table["rows"].items():
        g = by_key[key]
        left, opts = 1.0, []
        for row in sorted(rows, key=lambda r: -r["width"]):
            rel = row.get("of_base", row["ms"] / table["base_ms"])
            left = min(left, rel if rel < 1.0 - NOISE_FLOOR else 1.0)
            opts.append((-math.log(max(left, 1e-6)), _loss(scores[g.id], row["width"]), row["width"]))
        options[g.id] = opts
    return options


def _next_saving(history: list[tuple[float, float]], needed: float) -> float | None:
    """The planned saving (−ln predicted fraction) expected to measure ``needed`` (−ln target fraction),
    fitted to every plan measured so far (``history``: planned, measured).

    Between two measured plans that bracket the goal: their secant. Otherwise the factor that best maps
    planned onto measured savings (least squares through the origin, the unpruned model: nothing planned,
    nothing saved), which absorbs a consistently non-additive table. None when no plan saved anything.
    """
    below = [(x, y) for x, y in history if y < needed]
    above = [(x, y) for x, y in history if y >= needed]
    if below and above:
        (x0, y0), (x1, y1) = max(below, key=lambda t: t[1]), min(above, key=lambda t: t[1])
        if y1 - y0 > 1e-9:
            return x0 + (needed - y0) * (x1 - x0) / (y1 - y0)
    sxy = sum(x * y for x, y in history)
    sxx = sum(x * x for x, _ in history)
    if sxy <= 0 or sxx <= 0:
        return None
    return needed * sxx / sxy


def search(gm: fx.GraphModule, graph: ChannelGraph, example_inputs: tuple, config: PruneConfig,
           scores: dict[int, torch.Tensor], measure=None) -> tuple[dict[int, list[int] | None], dict]:
    """Kept channels per group meeting ``config.latency`` as measured by ``measure``, and the latency report.

    A plan's predicted latency is the unpruned one times the product of its cuts' measured fractions
    (``of_base``): never below zero however the single-cut savings sum, and exact where a cut scales a share
    of the time. Each plan is measured beside the unpruned model (the median per-round ratio over
    :data:`CHECK_ROUNDS` rounds); the next plan's goal is refitted from every plan measured so far
    (:func:`_next_saving`). A miss larger than twice ``tolerance`` earns extra rounds, up to twice
    ``max_rounds``; the result is the least-loss plan measured within tolerance, else the closest.

    The report holds the target, the predicted and measured latency of the result, every round of the
    search (predicted and measured side by side), and the table.
    """
    target: LatencyTarget = config.latency
    measure = measure or TorchLatency()
    table = latency_table(gm, graph, example_inputs, config, measure)
    base = table["base_ms"]
    goal = target.target_ms(base)
    options = _options(table, graph, scores)
    needed = -math.log(goal / base)
    wanted, rounds, best, history, seen = needed, [], None, [], set()
    reference = measure.runner(gm, example_inputs)
    budget = target.max_rounds
    while len(rounds) < budget:
        for _ in range(4):
            # predicted between the goal and tolerance faster: a plan far faster than the target misses it too
            choice = _choose(options, wanted, 0.0, most=wanted - math.log(1.0 - target.tolerance))
            key = tuple(sorted(choice.items()))
            if key not in seen:
                break
            # the refitted goal asks for a plan already measured: step past it, towards the goal
            wanted += (1 if rounds[-1]["measured_ms"] > goal else -1) * -math.log(1.0 - target.tolerance / 2)
        else:
            break  # the table gives nothing new near the goal
        seen.add(key)
        cuts = [(gid, options[gid][i]) for gid, i in choice.items() if i >= 0]
        kept = {gid: None if i < 0 else ranked(scores[gid], options[gid][i][2]) for gid, i in choice.items()}
        planned = sum(o[0] for _, o in cuts)
        predicted = base * math.exp(-planned)
        loss = sum(o[1] for _, o in cuts)
        # timed beside the unpruned model in the same rounds: load slows both alike, the ratio stays
        runners = [reference, measure.runner(_cut(gm, graph, kept), example_inputs)]
        per_round = time_rounds(runners, pinned=measure.pinned(), rounds=CHECK_ROUNDS)
        fraction = ratios_to_first(per_round)[1]
        if abs(fraction * base - goal) <= target.tolerance * goal:
            # a hit is confirmed by as many rounds again (pooled): one check's noise alone can fake a hit
            per_round += time_rounds(runners, pinned=measure.pinned(), rounds=CHECK_ROUNDS)
            fraction = ratios_to_first(per_round)[1]
        measured = fraction * base
        spread = sorted(r[1] / r[0] for r in per_round)
        rounds.append({"predicted_ms": predicted, "measured_ms": measured,
                       "predicted_fraction": predicted / base, "measured_fraction": fraction,
                       "measured_fraction_quartiles": [spread[len(spread) // 4], spread[3 * len(spread) // 4]],
                       "check_rounds": len(per_round),
                       "importance_lost": loss, "widths": {by_key_id(graph, gid): o[2] for gid, o in cuts}})
        miss = abs(measured - goal) / goal
        # within ±tolerance: the least importance lost wins; else the closest to the goal (a plan far faster
        # than the target is no better than one as far too slow)
        status = 2 if miss <= target.tolerance else int(measured < goal)
        rank = (status == 2, -loss if status == 2 else -miss)
        if best is None or rank > best[0]:
            best = (rank, kept, measured, loss, predicted)
        if status == 2:
            break
        if miss > 1.5 * target.tolerance and len(rounds) == budget:
            budget = min(budget + 1, 2 * target.max_rounds)  # far off: the fit has more to learn
        history.append((planned, -math.log(max(fraction, 1e-6))))
        new_wanted = _next_saving(history, needed)
        if new_wanted is None or abs(new_wanted - wanted) <= 1e-3 * max(wanted, 1e-9):
            break
        wanted = new_wanted
    (within, _), kept, measured, loss, predicted = best
    meets = within or measured <= goal * (1 + target.tolerance)
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


__all__ = ["TorchLatency", "latency_table", "median_ms", "ratios_to_first", "search", "time_interleaved",
           "time_rounds"]
