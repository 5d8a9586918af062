"""The Distiller: frozen teacher, hooks by module path on unwrapped models, adapters, the zero-gradient check,
QAT and pruned students."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from compress.distill import (
    AttentionTransfer,
    DistillConfig,
    Distiller,
    FeatureLoss,
    KDLoss,
    distill,
)
from compress.errors import ConfigError, QualityError
from compress.layers.prune import get_mask
from compress.passes.prune import PruneConfig, prune
from tests.distill.distill_nets import TinyNet, make_data

CPU = dict(device="cpu", seed=0)


def test_teacher_stays_frozen_and_is_restored(pair):
    teacher, student = pair
    before = copy.deepcopy(teacher.state_dict())
    teacher2, student2 = copy.deepcopy(pair)
    d = Distiller(teacher, student, [KDLoss()])
    d.train()
    assert not d.teacher.training and d.student.training
    assert all(not p.requires_grad for p in d.teacher.parameters())
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in student.parameters()}
    distill(teacher2, student2, make_data(32), DistillConfig(epochs=1, batch_size=8, **CPU), progress=False)
    assert all(p.requires_grad for p in teacher2.parameters())  # distill() gives the flags back
    for k, v in teacher2.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_feature_loss_matches_the_hand_computed_hint(pair):
    """Hooks collect the right tensors: compare with conv outputs computed by calling the layers directly."""
    teacher, student = pair
    x = torch.from_numpy(make_data(8).x)
    d = Distiller(teacher, nn.DataParallel(student), [FeatureLoss("module.conv2", "module.conv1")]).build(x)
    adapter = d.adapters["conv1"]
    assert isinstance(adapter, nn.Conv2d) and adapter.weight.shape == (8, 4, 1, 1)  # 4 → 8 channels, 1×1
    step = d(x)
    with torch.no_grad():
        t_feat = teacher.conv2(torch.relu(teacher.conv1(x)))
        want = F.mse_loss(F.conv2d(student.conv1(x), adapter.weight), t_feat)
    assert float(step.parts["feature"].detach()) == pytest.approx(float(want), rel=1e-5)
    step.loss.backward()
    assert adapter.weight.grad is not None and float(adapter.weight.grad.abs().sum()) > 0
    assert float(student.conv1.weight.grad.abs().sum()) > 0
    assert student.fc.weight.grad is None  # a hint on conv1 trains conv1 only


def test_wrapped_teacher_is_unwrapped(pair):
    teacher, student = pair
    d = Distiller(nn.DataParallel(teacher), student, [KDLoss()])
    assert d.teacher is teacher


def test_unknown_path_lists_close_names(pair):
    teacher, student = pair
    with pytest.raises(ConfigError, match="student has no module 'convv1'.*conv1"):
        Distiller(teacher, student, [FeatureLoss("conv2", "convv1")])
    with pytest.raises(ConfigError, match="teacher has no module 'layer3'"):
        distill(teacher, student, make_data(16),
                DistillConfig(losses=("kd", "feature"), features=(("layer3", "conv1"),), **CPU), progress=False)


def test_a_module_that_never_runs_is_an_error(pair):
    teacher, student = pair
    student.unused = nn.Conv2d(4, 4, 1)
    with pytest.raises(ConfigError, match="'unused' did not run"):
        Distiller(teacher, student, [FeatureLoss("conv2", "unused")]).build(torch.zeros(2, 1, 6, 6))


def test_zero_gradient_for_an_epoch_is_an_error(pair):
    teacher, student = pair
    student.conv1.requires_grad_(False)  # the hint compares a frozen layer's output: no gradient can flow
    cfg = DistillConfig(losses=("kd", "attention"), features=(("conv2", "conv1"),), epochs=1, batch_size=8, **CPU)
    with pytest.raises(QualityError, match=r"attention\(conv2→conv1\) got zero gradient in epoch 1"):
        distill(teacher, student, make_data(16), cfg, progress=False)


def test_student_for_export_drops_adapters_and_hooks(pair):
    teacher, student = pair
    d = Distiller(teacher, student, [KDLoss(), FeatureLoss("conv2", "conv1")]).build(torch.zeros(2, 1, 6, 6))
    assert any("adapters" in k for k in d.state_dict())
    out = d.student_for_export()
    assert out is student and set(out.state_dict()) == set(TinyNet(4).state_dict())
    assert all(not m._forward_hooks for m in out.modules())


def test_attention_transfer_moves_the_students_maps_towards_the_teachers(pair):
    teacher, student = pair
    data = make_data(64)
    x = torch.from_numpy(data.x)
    at = AttentionTransfer("conv2", "conv1", weight=1.0)

    def distance():
        with torch.no_grad():
            return float(at(student.conv1(x), teacher.conv2(torch.relu(teacher.conv1(x)))))

    start = distance()
    cfg = DistillConfig(losses=("attention",), features=(("conv2", "conv1"),), epochs=3, batch_size=8, lr=1e-2,
                        **CPU)
    distill(teacher, student, data, cfg, progress=False)
    assert distance() < 0.5 * start


def test_qat_student_distils_and_converts():
    torch.manual_seed(0)
    teacher = TinyNet(8, bn=True).eval()
    data = make_data(32)
    example = torch.from_numpy(data.x[:2])
    student = compress.calibrate(compress.prepare(TinyNet(4, bn=True).eval(), example, qat=True),
                                 [torch.from_numpy(data.x)], progress=False)
    before = copy.deepcopy(student.state_dict())
    cfg = DistillConfig(losses=("kd", "feature"), features=(("conv2", "conv1"),), epochs=1, batch_size=8, **CPU)
    result = distill(teacher, student, data, cfg, progress=False)
    assert np.isfinite(result.history[0]["loss"]) and result.history[0]["feature"] > 0
    changed = [k for k, v in result.student.state_dict().items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not torch.equal(v, before[k])]
    assert any(k.startswith("conv1.") for k in changed)
    int8 = compress.convert(result.student)
    assert int8(example).shape == (2, 3)


def test_pruned_student_keeps_its_masks():
    torch.manual_seed(0)
    teacher = TinyNet(8).eval()
    student = TinyNet(8)
    prune(student, torch.zeros(2, 1, 6, 6), PruneConfig(sparsity=0.5))
    mask = get_mask(student.conv2).clone()
    before = student.conv2.weight.detach().clone()
    distill(teacher, student, make_data(32), DistillConfig(epochs=2, batch_size=8, **CPU), progress=False)
    w = student.conv2.weight.detach()
    assert torch.equal(get_mask(student.conv2), mask)
    assert float(w[~mask].abs().max()) == 0.0
    assert not torch.equal(w[mask], before[mask])


def test_narrow_derived_student_from_pruning_distils():
    from compress.distill import derive_student

    torch.manual_seed(0)
    teacher = TinyNet(8).eval()
    student = derive_student(teacher, "narrow", 0.5, torch.zeros(2, 1, 6, 6))
    assert student.get_submodule("conv1").out_channels == 4
    cfg = DistillConfig(losses=("kd", "feature"), features=(("conv2", "conv2"),), epochs=1, batch_size=8, **CPU)
    result = distill(teacher, student, make_data(16), cfg, progress=False)
    assert result.history[0]["feature"] > 0


def test_transformer_losses_on_hidden_states_attention_and_values():
    from compress.distill import AttentionMatrixLoss, HiddenStateLoss, ValueRelationLoss
    from tests.distill.distill_nets import TinyEncoder

    torch.manual_seed(0)
    teacher, student = TinyEncoder(16, heads=2).eval(), TinyEncoder(8, heads=2)
    ids = torch.randint(0, 12, (4, 5))
    losses = [HiddenStateLoss("value", "value"), AttentionMatrixLoss("attn", "attn"),
              ValueRelationLoss("value", "value", heads=2)]
    d = Distiller(teacher, student, losses).build(ids)
    assert isinstance(d.adapters["value"], nn.Linear) and d.adapters["value"].weight.shape == (16, 8)
    d.eval()
    step = d(ids)
    with torch.no_grad():
        def parts(m):
            h = m.embed(ids)
            a, w = m.attn(h, h, h, need_weights=True, average_attn_weights=False)
            return w, m.value(h + a)

        (tw, tv), (sw, sv) = parts(teacher), parts(student)
        want_hidden = F.mse_loss(sv @ d.adapters["value"].weight.T, tv)
    assert tw.shape == (4, 2, 5, 5)
    assert float(step.parts["hidden"].detach()) == pytest.approx(float(want_hidden), rel=1e-5)
    assert float(step.parts["attention_matrix"].detach()) == pytest.approx(float(F.mse_loss(sw, tw)), rel=1e-5)
    want_rel = ValueRelationLoss("t", "s", heads=2)(sv, tv)  # its numpy oracle is in test_distill_losses
    assert float(step.parts["value_relation"].detach()) == pytest.approx(float(want_rel), rel=1e-5)
    step.loss.backward()
    d.check_gradients()  # every term reached the student


def test_one_student_layer_hinted_by_two_teacher_layers_gets_two_adapters(pair):
    teacher, _ = pair
    student = TinyNet(4)
    custom = nn.Conv2d(4, 8, 1, bias=False)
    d = Distiller(teacher, student, [FeatureLoss("conv1", "conv1"), FeatureLoss("conv2", "conv1")])
    d.build(torch.zeros(2, 1, 6, 6))
    assert sorted(d.adapters) == ["conv1__to__conv1", "conv1__to__conv2"]
    own = Distiller(teacher, TinyNet(4), [FeatureLoss("conv2", "conv1")], adapters={"conv1": custom})
    own.build(torch.zeros(2, 1, 6, 6))
    assert own.adapters["conv1"] is custom
