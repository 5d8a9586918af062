"""Unstructured magnitude pruning (layer-wise, global, limits, schedules) and N:M semi-structured masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compress.errors import ConfigError
from compress.layers.prune import finalize, get_mask, masked_tensors, prunable_tensors
from compress.passes.prune import (
    NM,
    FinetuneConfig,
    PruneConfig,
    Schedule,
    ScheduleKind,
    Scope,
    apply_plan,
    finetune,
    nm_mask,
    prune,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)  # tiny weights: global pruning must take most of them

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.conv(x))))  # [N, 8, 16, 16]
        seq, _ = self.lstm(h.mean(2).transpose(1, 2))
        return self.fc(seq[:, -1])


def _weights(model):
    return {f"{p}.{n}": getattr(m, n).detach() for p, m, n in prunable_tensors(model)}


def test_layerwise_removes_the_smallest_of_every_tensor():
    torch.manual_seed(0)
    net = Net()
    before = _weights(net)
    result = prune(net, torch.randn(2, 4, 8, 8), PruneConfig(sparsity=0.7))
    for key, w in _weights(net).items():
        n_zero = int((w == 0).sum())
        assert n_zero == math.floor(0.7 * w.numel()), key
        kept, dropped = before[key][w != 0].abs(), before[key][w == 0].abs()
        assert kept.min() >= dropped.max(), f"{key}: a larger weight was pruned before a smaller one"
        assert result.plan["tensors"][key]["sparsity"] == pytest.approx(n_zero / w.numel())


def test_global_ranks_all_tensors_together_and_respects_max_sparsity():
    torch.manual_seed(0)
    net = Net()
    prune(net, torch.randn(2, 4, 8, 8), PruneConfig(sparsity=0.5, scope=Scope.GLOBAL))
    w = _weights(net)
    total = sum(t.numel() for t in w.values())
    assert sum(int((t == 0).sum()) for t in w.values()) == math.floor(0.5 * total)
    assert float((w["fc.weight"] == 0).float().mean()) == 1.0  # the tiny layer goes first

    torch.manual_seed(0)
    capped = Net()
    prune(capped, torch.randn(2, 4, 8, 8), PruneConfig(sparsity=0.5, scope="global", max_sparsity=0.8,
                                                       skip=("conv",)))
    w = _weights(capped)
    assert float((w["fc.weight"] == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert get_mask(capped.conv, "weight") is None and bool((w["conv.weight"] != 0).all())


def test_schedules_follow_zhu_and_gupta():
    cubic = Schedule(ScheduleKind.POLYNOMIAL, begin_step=10, end_step=110, initial_sparsity=0.1)
    for t in (0, 10, 35, 60, 85, 110, 500):
        progress = min(max((t - 10) / 100, 0.0), 1.0)
        assert cubic.sparsity_at(t, 0.9) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - progress) ** 3)
    linear = Schedule("linear", begin_step=0, end_step=4)
    assert [linear.sparsity_at(t, 0.8) for t in range(6)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert Schedule().sparsity_at(0, 0.8) == 0.8
    with pytest.raises(ConfigError, match="begin_step"):
        Schedule("linear", begin_step=5, end_step=1)


def test_gradual_pruning_in_the_fine_tune_loop_reaches_the_final_sparsity():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    cfg = PruneConfig(sparsity=0.9, schedule=Schedule("polynomial", 0, 12, frequency=3))
    prune(net, torch.randn(2, 8), cfg)
    assert float((net[0].weight == 0).float().mean()) == 0.0  # step 0 of the ramp
    seen = []
    hook = net[0].register_forward_hook(lambda m, i, o: seen.append(float((m.weight == 0).float().mean())))
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(8)]
    finetune(net, data, FinetuneConfig(epochs=2, device="cpu"), prune_config=cfg)
    hook.remove()
    assert seen == sorted(seen) and 0.0 < seen[4] < 0.9  # monotone ramp through intermediate values
    assert float((net[0].weight == 0).float().mean()) == pytest.approx(0.9, abs=0.01)
    finalize(net)
    assert not list(masked_tensors(net))


def _groups_ok(w: torch.Tensor, nm: NM, axis: int) -> bool:
    g = w.movedim(axis, -1)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // nm.m, nm.m)
    return bool(((g == 0).sum(-1) >= nm.n).all())


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_on_every_weight_along_input_channels(pattern):
    nm = NM.parse(pattern)
    torch.manual_seed(0)
    net = nn.ModuleDict({
        "conv": nn.Conv2d(16, 8, 3), "tconv": nn.ConvTranspose2d(16, 8, 2), "fc": nn.Linear(32, 8),
        "gru": nn.GRU(16, 8), "mha": nn.MultiheadAttention(16, 2), "odd": nn.Linear(6, 4), "emb": nn.Embedding(9, 8),
    })
    result = prune(net, torch.randn(2, 16), PruneConfig(nm=nm))
    rows = result.plan["tensors"]
    assert "not a multiple" in rows["odd.weight"]["skipped"] and "lookup" in rows["emb.weight"]["skipped"]
    finalize(net)
    checked = 0
    for path, m, name in prunable_tensors(net):
        if path in ("odd", "emb"):
            continue
        axis = 0 if isinstance(m, nn.ConvTranspose2d) else 1
        w = getattr(m, name).detach()
        assert _groups_ok(w, nm, axis), f"{path}.{name} breaks {pattern}"
        assert float((w == 0).float().mean()) == pytest.approx(nm.n / nm.m)
        checked += 1
    assert checked == 7  # conv, tconv, fc, gru ih + hh, mha in_proj + out_proj


def test_nm_keeps_the_largest_and_the_check_can_fail():
    w = torch.randn(4, 8)
    mask = nm_mask(w, NM(2, 4))
    groups = w.abs().reshape(4, 2, 4)
    kept = mask.reshape(4, 2, 4)
    assert bool((groups[kept].reshape(4, 2, 2).min(-1).values >= groups[~kept].reshape(4, 2, 2).max(-1).values).all())
    assert not _groups_ok(torch.ones(4, 8), NM(2, 4), 1)


def test_mask_plan_replays_and_bad_configs_raise():
    torch.manual_seed(0)
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    plan = prune(a, torch.randn(2, 4, 8, 8), PruneConfig(sparsity=0.6)).plan
    apply_plan(b, torch.randn(2, 4, 8, 8), plan)
    for key, w in _weights(a).items():
        assert torch.equal(w == 0, _weights(b)[key] == 0)
    with pytest.raises(ConfigError, match="choose one pruning mode"):
        PruneConfig(sparsity=0.5, channels=0.5)
    with pytest.raises(ConfigError, match="fraction"):
        PruneConfig(sparsity=1.5)
    with pytest.raises(ConfigError, match="N:M"):
        PruneConfig(nm="4:2")
