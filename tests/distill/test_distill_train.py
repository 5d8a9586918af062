"""distill() / train_baseline(): options, transfer data, determinism, checkpoints and resume, precision."""

import math

import numpy as np
import pytest
import torch

import compress.distill.train as train_mod
from compress.distill import DistillConfig, distill, evaluate, train_baseline
from compress.errors import ConfigError, DataError
from tests.distill.distill_nets import TinyNet, make_data

CPU = dict(device="cpu")


def _fresh(seed: int = 1):
    torch.manual_seed(0)
    teacher = TinyNet(8).eval()
    torch.manual_seed(seed)
    return teacher, TinyNet(4)


def _same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("kwargs,match", [
    (dict(losses=("kd", "fitnet")), "unknown distillation loss fitnet"),
    (dict(losses=("feature",)), "give feature pairs"),
    (dict(features=(("a", "b"),)), "no loss uses them"),
    (dict(features=(("a",),), losses=("feature",)), "pairs"),
    (dict(resume=True), "resume needs checkpoint_dir"),
    (dict(mixed_precision="int4"), "mixed_precision"),
    (dict(epochs=0), "epochs"),
    (dict(alpha=2.0), "alpha"),
])
def test_config_errors_name_the_option(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**kwargs)


def test_transfer_batches_are_mixed_in_and_use_the_teacher_alone():
    teacher, student = _fresh()
    labelled, transfer = make_data(20, seed=0), make_data(44, seed=1, labelled=False)
    seen = []
    real = train_mod._epoch_batches

    def spy(*args):
        batches = list(real(*args))
        seen.append([y is None for _, y in batches])
        return batches

    train_mod._epoch_batches, saved = spy, real
    try:
        result = distill(teacher, student, labelled, DistillConfig(epochs=2, batch_size=8, **CPU),
                         transfer=transfer, progress=False)
    finally:
        train_mod._epoch_batches = saved
    per_epoch = math.ceil(20 / 8) + math.ceil(44 / 8)
    assert result.steps == 2 * per_epoch
    assert [sum(s) for s in seen] == [6, 6] and [len(s) for s in seen] == [per_epoch] * 2
    assert seen[0] != seen[1]  # a fresh interleaving every epoch
    row = result.history[0]
    assert set(row) == {"epoch", "loss", "kd", "ce", "metric", "seconds"}
    # ce averages the 3 labelled batches only, kd all 9: loss = mean(kd) + 3/9 · mean(ce)
    assert row["loss"] == pytest.approx(row["kd"] + row["ce"] * 3 / per_epoch, rel=1e-5)


def test_unlabelled_train_data_distils_and_the_baseline_refuses_it():
    teacher, student = _fresh()
    unlabelled = make_data(16, labelled=False)
    result = distill(teacher, student, unlabelled, DistillConfig(epochs=1, batch_size=8, **CPU), progress=False)
    assert "ce" not in result.history[0]
    with pytest.raises(DataError, match="hard labels"):
        train_baseline(TinyNet(4), unlabelled, DistillConfig(**CPU), progress=False)
    with pytest.raises(DataError, match="labels"):
        evaluate(student, unlabelled)


def test_same_seed_same_weights_other_seed_other_weights():
    data, transfer = make_data(24), make_data(24, seed=3, labelled=False)
    runs = []
    for seed in (0, 0, 1):
        teacher, student = _fresh()
        cfg = DistillConfig(epochs=2, batch_size=8, seed=seed, losses=("kd", "feature"),
                            features=(("conv2", "conv1"),), **CPU)
        runs.append(distill(teacher, student, data, cfg, transfer=transfer, progress=False).student)
    assert _same_weights(runs[0], runs[1])
    assert not _same_weights(runs[0], runs[2])


def test_resume_after_an_interrupted_epoch_gives_the_uninterrupted_run(tmp_path):
    data = make_data(32)
    cfg = dict(epochs=3, batch_size=8, losses=("kd", "feature"), features=(("conv2", "conv1"),), seed=2, **CPU)
    teacher, student = _fresh()
    straight = distill(teacher, student, data, DistillConfig(**cfg), eval_data=data, progress=False)

    real, calls = train_mod._save_checkpoint, []

    def crash_after_first(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    teacher, student = _fresh()
    train_mod._save_checkpoint = crash_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            distill(teacher, student, data, DistillConfig(checkpoint_dir=tmp_path, **cfg), eval_data=data,
                    progress=False)
    finally:
        train_mod._save_checkpoint = real
    assert (tmp_path / "distill-last.pt").is_file()
    with pytest.raises(ConfigError, match="already exists; pass resume=True"):
        distill(teacher, TinyNet(4), data, DistillConfig(checkpoint_dir=tmp_path, **cfg), progress=False)
    teacher, fresh_student = _fresh(seed=5)  # a differently initialised student: the checkpoint decides
    resumed = distill(teacher, fresh_student, data, DistillConfig(checkpoint_dir=tmp_path, resume=True, **cfg),
                      eval_data=data, progress=False)
    assert _same_weights(resumed.student, straight.student)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert resumed.steps == straight.steps == 12


def test_checkpoint_of_another_student_is_a_config_error(tmp_path):
    data = make_data(16)
    teacher, student = _fresh()
    distill(teacher, student, data, DistillConfig(epochs=1, batch_size=8, checkpoint_dir=tmp_path, **CPU),
            progress=False)
    with pytest.raises(ConfigError, match="does not match this student"):
        distill(teacher, TinyNet(6), data,
                DistillConfig(epochs=1, batch_size=8, checkpoint_dir=tmp_path, resume=True, **CPU), progress=False)
    with pytest.raises(ConfigError, match=r"other options \(steps 2 → 4; lr 0.001 → 0.01\)"):
        distill(teacher, TinyNet(4), data, DistillConfig(epochs=2, lr=1e-2, batch_size=8, checkpoint_dir=tmp_path,
                                                         resume=True, **CPU), progress=False)


def test_baseline_takes_the_given_step_budget_and_learns():
    data = make_data(64)
    torch.manual_seed(0)
    result = train_baseline(TinyNet(8), data, DistillConfig(epochs=1, batch_size=8, lr=1e-2, **CPU),
                            eval_data=data, progress=False, steps=80)
    assert result.steps == 80 and len(result.history) == 10
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.metric == evaluate(result.student, data)
    # accuracy from an independent count
    with torch.no_grad():
        pred = result.student(torch.from_numpy(data.x)).argmax(1).numpy()
    assert result.metric == pytest.approx(np.mean(pred == data.y))


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda():
    teacher, student = _fresh()
    result = distill(teacher, student, make_data(16), DistillConfig(epochs=1, batch_size=8, mixed_precision="bf16",
                                                                    **CPU), progress=False)
    assert np.isfinite(result.history[0]["loss"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16' needs CUDA"):
            distill(teacher, TinyNet(4), make_data(16), DistillConfig(mixed_precision="fp16", **CPU), progress=False)


def test_progress_bar_shows_the_loss_parts(capsys):
    teacher, student = _fresh()
    train_mod_progress = train_mod._progress
    shown = []

    def spy(total, description, enabled):
        bar, task = train_mod_progress(total, description, False)
        real_update = bar.update

        def update(task_id, **kw):
            if "description" in kw:
                shown.append(kw["description"])
            real_update(task_id, **kw)

        bar.update = update
        return bar, task

    train_mod._progress = spy
    try:
        distill(teacher, student, make_data(80), DistillConfig(epochs=1, batch_size=8, **CPU), progress=True)
    finally:
        train_mod._progress = train_mod_progress
    assert shown and "kd" in shown[-1] and "ce" in shown[-1] and "loss" in shown[-1]


class _TwoInputs(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.embed = torch.nn.Embedding(10, width)
        self.fc = torch.nn.Linear(width + 3, 3)

    def forward(self, ids, extra):
        return self.fc(torch.cat([self.embed(ids).mean(1), extra], 1))


def test_several_named_inputs_labelled_and_transfer():
    from compress.io import Dataset

    rng = np.random.default_rng(0)

    def data(n, labelled=True):
        ids, extra = rng.integers(0, 10, (n, 4)), rng.normal(size=(n, 3)).astype(np.float32)
        return Dataset({"ids": ids, "extra": extra}, (ids[:, 0] % 3) if labelled else None)

    torch.manual_seed(0)
    teacher, student = _TwoInputs(8).eval(), _TwoInputs(4)
    cfg = DistillConfig(epochs=1, batch_size=8, losses=("kd", "hidden"), features=(("embed", "embed"),), **CPU)
    result = distill(teacher, student, data(16), cfg, transfer=data(24, labelled=False), progress=False)
    assert result.steps == 5 and result.history[0]["hidden"] > 0
