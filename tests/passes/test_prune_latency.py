"""Latency-driven structured pruning: the search against brute force, a deterministic latency model, the
table cache, and one real onnxruntime run."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.passes.prune import LatencyTarget, PruneConfig, apply_plan, prune
from compress.passes.prune import latency as lat


def test_choose_is_the_least_loss_combination_that_meets_the_saving():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        options = {}
        for g in range(4):
            saves = torch.rand(3, generator=gen).sort().values.tolist()
            losses = torch.rand(3, generator=gen).sort().values.tolist()
            options[g] = [(s, c, 8 - i) for i, (s, c) in enumerate(zip(saves, losses, strict=True))]
        need = float(torch.rand(1, generator=gen)) * 2.0
        choice = lat._choose(options, need, floor=0.0)
        got_save = sum(options[g][i][0] for g, i in choice.items() if i >= 0)
        got_loss = sum(options[g][i][1] for g, i in choice.items() if i >= 0)
        # brute force over every combination (-1 = uncut)
        combos = []
        for combo in itertools.product(range(-1, 3), repeat=4):
            save = sum(options[g][i][0] for g, i in enumerate(combo) if i >= 0)
            loss = sum(options[g][i][1] for g, i in enumerate(combo) if i >= 0)
            combos.append((save, loss))
        if not any(save >= need for save, _ in combos):
            assert choice == {g: 2 for g in range(4)}, trial  # unreachable: the largest cut everywhere
            continue
        assert got_save >= need - 1e-9, trial
        # savings are counted in 1/200 of the goal, rounded down (< 1 unit per group): every combination
        # saving 4 units more than needed is seen, so none of those loses less
        slack = need * (1 + 4 / lat.BINS)
        assert all(got_loss <= loss + 1e-9 for save, loss in combos if save >= slack), trial


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.fc(x.mean((2, 3)))


def macs_by_hand(model: nn.Module, hw: int = 8 * 8) -> int:
    """The test's own latency model: conv MACs from the module shapes, plus a fixed overhead."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return sum(m.in_channels * m.out_channels * 9 * hw for m in convs)


class FakeMeasure:
    """Deterministic 'latency': 1 ms per 100k MACs + 0.05 ms; counts how many models it was given."""

    name = "fake-macs"

    def __init__(self):
        self.calls = 0

    def runner(self, model, example_inputs):
        self.calls += 1
        ms = 0.05 + macs_by_hand(model) / 1e5
        return lambda: ms

    def pinned(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    # a burst's "time" is what the fake runner returns: the median of `runs` calls, as median_ms takes
    monkeypatch.setattr(lat, "median_ms", lambda fn, runs, **_: statistics.median(fn() for _ in range(runs)))


@pytest.mark.slow  # three captures (torch.export) of a small net
def test_search_meets_a_deterministic_target_and_caches_the_table(fake_timing, tmp_path):
    fraction = 0.6
    torch.manual_seed(0)
    net = Plain().eval()
    x = torch.randn(2, 3, 8, 8)
    measure = FakeMeasure()
    base = 0.05 + macs_by_hand(net) / 1e5
    config = PruneConfig(latency=LatencyTarget(fraction=fraction, steps=(0.25, 0.5, 0.75)))
    result = prune(net, x, config, measure=measure)
    got = 0.05 + macs_by_hand(result.model) / 1e5
    report = result.plan["latency"]
    assert abs(got / base - fraction) <= 0.1 * fraction, (got / base, report["rounds"])  # the issue: ±10 %
    assert report["measured_ms"] == pytest.approx(got) and report["met"]
    # savings do not add up (b is cut on both sides): the first prediction is off, a later round corrects it
    assert report["predicted_ms"] != pytest.approx(got)
    assert not report["table_cached"] and set(report["table"]) == {"a", "b", "c"}  # fc: the model output
    with torch.no_grad():
        assert result.model(x).shape == (2, 4)

    first = measure.calls
    again = prune(net, x, config, measure=measure)
    assert again.plan["latency"]["table_cached"]
    # only the checks (the unpruned reference once, each plan once), no table
    assert measure.calls - first == 1 + len(again.plan["latency"]["rounds"])
    assert again.plan["groups"] == result.plan["groups"]
    replayed = apply_plan(Plain().eval(), x, result.plan)
    assert macs_by_hand(replayed.model) == macs_by_hand(result.model)


class Chain(nn.Module):
    """Six 32-channel convs in a row: every group sits between two convs, so the single-group savings of the
    widest cuts sum to ~1.25× the base latency (cuts multiply, they do not add)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 32, 3, padding=1)] +
                                   [nn.Conv2d(32, 32, 3, padding=1) for _ in range(5)])
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


def true_ms(model: nn.Module) -> float:
    return 0.02 + macs_by_hand(model) / 1e5


class NoisyMeasure:
    """A loaded machine, seeded: each call takes ``true_ms`` × a load shared by neighbouring calls (a random
    walk in [1, 3], other jobs coming and going) × its own uniform ±30 % jitter."""

    def __init__(self, seed: int):
        self.name = f"fake-noisy-{seed}"  # the table's cache key: each seed measures its own
        self.gen = torch.Generator().manual_seed(seed)
        self.load = 1.5

    def _draw(self) -> float:
        return float(torch.rand(1, generator=self.gen))

    def runner(self, model, example_inputs):
        ms = true_ms(model)

        def run():
            self.load = min(3.0, max(1.0, self.load * math.exp(0.05 * (2 * self._draw() - 1))))
            return ms * self.load * (1 + 0.3 * (2 * self._draw() - 1))

        return run

    def pinned(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.slow  # one capture (torch.export) per search, ten searches
def test_noisy_non_additive_timing_still_lands_within_ten_percent(fake_timing):
    """Issue 9: ±30 % timing noise on a drifting load, savings summing past the base. The old search (absolute
    differences of fastest rounds, additive prediction) predicted negative latencies on every seed here and
    landed within ±10 % on 0 of 5; this one's noise is in its checks too, so 8 of 10 seeds must land."""
    torch.manual_seed(0)
    net = Chain().eval()
    x = torch.randn(2, 3, 8, 8)
    assert sum(true_ms(net) - true_ms(_cut_one(net, x, i, 8)) for i in range(5)) > true_ms(net)  # the premise
    got = []
    for seed in range(10):
        result = prune(net, x, PruneConfig(latency=LatencyTarget(fraction=0.5)), measure=NoisyMeasure(seed))
        report = result.plan["latency"]
        assert report["rounds"] and all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 for r in report["rounds"])
        got.append(true_ms(result.model) / true_ms(net))  # the noiseless latency of the final model
    assert sum(abs(g - 0.5) <= 0.1 * 0.5 for g in got) >= 8, got
    assert all(abs(g - 0.5) <= 0.2 * 0.5 for g in got), got  # and no seed far off


def _cut_one(net: Chain, x, i: int, width: int) -> nn.Module:
    """``net`` with conv ``i``'s output group cut to ``width`` channels, by hand (the test's own surgery)."""
    import copy

    out = copy.deepcopy(net)
    a, b = out.convs[i], out.convs[i + 1]
    a.weight, a.bias = nn.Parameter(a.weight[:width]), nn.Parameter(a.bias[:width])
    a.out_channels = width
    b.weight, b.in_channels = nn.Parameter(b.weight[:, :width]), width
    return out


def test_an_unreachable_target_says_so(fake_timing):
    net = Plain().eval()
    result = prune(net, torch.randn(2, 3, 8, 8), PruneConfig(latency=LatencyTarget(ms=0.01)), measure=FakeMeasure())
    report = result.plan["latency"]
    assert not report["met"] and report["measured_ms"] > report["target_ms"]


def test_latency_target_validation():
    with pytest.raises(ConfigError, match="not both"):
        LatencyTarget(fraction=0.5, ms=3.0)
    with pytest.raises(ConfigError, match="fraction"):
        LatencyTarget(fraction=1.5)
    with pytest.raises(ConfigError, match="one pruning mode"):
        PruneConfig(channels=0.5, latency=LatencyTarget(fraction=0.5))
    cfg = PruneConfig(latency=LatencyTarget(ms=2.0, steps=(0.5, 0.25)))
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg and cfg.latency.steps == (0.25, 0.5)


@pytest.mark.onnx
@pytest.mark.slow
def test_onnxruntime_latency_lands_near_the_target(tmp_path, monkeypatch):
    """Real timing in onnxruntime on a compute-bound net: the final file, timed beside the unpruned one."""
    from compress.cli.prune import OrtLatency, _file_latencies
    from compress.exporters import export_onnx

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    net = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10)).eval()
    x = torch.randn(2, 3, 32, 32)
    result = prune(net, x, PruneConfig(latency=LatencyTarget(fraction=0.5, steps=(0.25, 0.5, 0.75))),
                   measure=OrtLatency(1))
    export_onnx(net, (x[:1],), tmp_path / "before.onnx")
    export_onnx(result.model, (x[:1],), tmp_path / "after.onnx")
    times = _file_latencies({"before": tmp_path / "before.onnx", "after": tmp_path / "after.onnx"}, (x,))
    ratio = times["after"] / times["before"]
    # measured here (2 shared cores): 0.45-0.55; a loaded machine widens it, hence the margin
    assert 0.3 < ratio < 0.7, (ratio, {k: v for k, v in result.plan["latency"].items() if k != "table"})


@pytest.mark.tflite
@pytest.mark.onnx
def test_real_measures_time_their_runtime(tmp_path, monkeypatch):
    """Each measure runs the model it is given in its runtime (outputs equal torch's) and names itself."""
    import numpy as np

    from compress.cli.prune import LiteRTLatency, OrtLatency
    from compress.passes.prune import TorchLatency

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x[:1]).numpy()
    for measure, prefix in ((OrtLatency(1), "onnxruntime-"), (LiteRTLatency(1), "litert-"),
                            (TorchLatency(1), "torch-")):
        assert measure.name.startswith(prefix) and measure.name.endswith("-1t")
        run = measure.runner(net, (x,))
        out = run()
        out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
        (ms,) = lat.time_interleaved([run], pinned=measure.pinned(), rounds=2, seconds=0.005)
        assert 0 < ms < 1000
