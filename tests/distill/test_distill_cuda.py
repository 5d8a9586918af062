"""Distillation on CUDA: device="auto" picks the GPU, mixed precision trains, results come back to the CPU
(needs a GPU; skipped elsewhere)."""

import numpy as np
import pytest
import torch

from compress.distill import DistillConfig, distill, evaluate, train_baseline
from tests.distill.distill_nets import TinyNet, make_data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _pair():
    torch.manual_seed(0)
    teacher = TinyNet(16).eval()
    train_baseline(teacher, make_data(512, seed=4), DistillConfig(epochs=20, lr=1e-2, device="cpu"), progress=False)
    torch.manual_seed(1)
    return teacher, TinyNet(8)


@pytest.mark.parametrize("precision", ["off", "auto", "fp16"])
def test_distill_on_cuda_learns_like_the_cpu_run(precision):
    teacher, student = _pair()
    data, held_out = make_data(256, seed=5), make_data(256, seed=6)
    cfg = DistillConfig(epochs=6, lr=1e-2, batch_size=32, losses=("kd", "feature"), features=(("conv2", "conv2"),),
                        mixed_precision=precision)
    result = distill(teacher, student, data, cfg, eval_data=held_out, progress=False)
    assert next(result.student.parameters()).device.type == "cpu"
    assert next(teacher.parameters()).device.type == "cpu"  # the teacher goes back where it was
    assert all(np.isfinite(r["loss"]) for r in result.history)
    cpu = distill(*_pair(), data, DistillConfig(**{**cfg.__dict__, "device": "cpu", "mixed_precision": "off"}),
                  progress=False)
    assert abs(evaluate(result.student, held_out) - evaluate(cpu.student, held_out)) < 0.05
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_resume_on_cuda(tmp_path):
    teacher, student = _pair()
    data = make_data(64)
    cfg = DistillConfig(epochs=2, batch_size=16, checkpoint_dir=tmp_path)
    first = distill(teacher, student, data, cfg, progress=False)
    again = distill(teacher, TinyNet(8), data, DistillConfig(**{**cfg.__dict__, "resume": True}), progress=False)
    assert again.steps == first.steps and again.history == first.history
    for k, v in first.student.state_dict().items():
        assert torch.equal(v, again.student.state_dict()[k]), k
