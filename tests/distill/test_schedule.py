"""compress.schedule: BN re-estimation against numpy, locked zeros, and prune → distill → QAT → int8 ONNX whose
sparsity and accuracy are read back from the file and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.distill import DistillConfig
from compress.errors import ConfigError
from compress.io import Dataset
from compress.passes.prune import PruneConfig
from compress.pipeline import QuantizeOptions
from compress.schedule import ScheduleConfig, lock_zero_weights, reestimate_bn, run_schedule


def test_reestimate_bn_is_the_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU()).eval()
    x = np.random.default_rng(0).normal(2.0, 3.0, (40, 2, 6, 6)).astype(np.float32)
    assert reestimate_bn(net, [Dataset(x)], batches=1, batch_size=40) == 1
    conv = nn.functional.conv2d(torch.from_numpy(x), net[0].weight, net[0].bias).detach().numpy()
    np.testing.assert_allclose(net[1].running_mean.numpy(), conv.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net[1].running_var.numpy(), conv.transpose(1, 0, 2, 3).reshape(3, -1).var(1, ddof=1),
                               rtol=1e-4)
    assert net[1].momentum == 0.3 and not net.training  # options and mode as they were
    assert reestimate_bn(nn.Linear(2, 2), [Dataset(x.reshape(40, -1)[:, :2])]) == 0


def test_locked_zeros_stay_zero_and_unlock():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[:, ::2] = 0
    handles = lock_zero_weights(lin)
    opt = torch.optim.AdamW(lin.parameters(), lr=0.05, weight_decay=0.1)
    start = lin.weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        lin(torch.randn(8, 6)).pow(2).sum().backward()
        opt.step()
    assert torch.all(lin.weight[:, ::2] == 0)
    assert torch.all(lin.weight[:, 1::2] != start[:, 1::2])
    for h in handles:
        h.remove()
    lin(torch.randn(8, 6)).pow(2).sum().backward()
    opt.step()
    assert torch.any(lin.weight[:, ::2] != 0)


@pytest.fixture(scope="module")
def digits():
    from compress.demo import load_digits
    from compress.distill import train_baseline
    from compress.models import DemoCNN

    train, test = load_digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        teacher = train_baseline(DemoCNN(width=12), train, DistillConfig(epochs=3, lr=3e-3, device="cpu"),
                                 progress=False).student
    finally:
        torch.set_num_threads(threads)
    return teacher, train, test


@pytest.mark.onnx
@pytest.mark.tflite
@pytest.mark.slow
def test_sparse_student_stays_sparse_through_qat_into_the_int8_file(digits, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    teacher, train, test = digits
    cfg = ScheduleConfig(prune=PruneConfig(sparsity=0.5), distill=DistillConfig(epochs=2, lr=3e-3, device="cpu"),
                         qat=DistillConfig(epochs=1, lr=1e-4, device="cpu"),
                         export=QuantizeOptions(latency_runs=5, formats=("onnx", "tflite")))
    result = run_schedule(teacher, teacher, train.take(400), tmp_path, cfg, transfer=train, eval_data=test,
                          progress=False)
    stages = {s["stage"]: s for s in result.report["stages"]}
    assert list(stages) == ["initial", "prune", "bn_reestimate", "distill", "qat"]

    # Every conv / linear weight of the int8 file: int8 codes, ≥ 50 % zeros (the masks, locked through QAT).
    model = onnx.load(str(tmp_path / "student_int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(weights) == 5
    assert all(np.sum(w == 0) >= int(0.5 * w.size) for w in weights), [float(np.mean(w == 0)) for w in weights]

    # Accuracy of the int8 file as onnxruntime computes it, against the labels; near the teacher's.
    sess = ort.InferenceSession(str(tmp_path / "student_int8.onnx"), providers=["CPUExecutionProvider"])
    acc = float(np.mean(sess.run(None, {sess.get_inputs()[0].name: test.x})[0].argmax(1) == test.y))
    assert result.report["formats"]["onnx"]["int8"]["accuracy"] == pytest.approx(acc)
    assert acc > result.report["teacher"]["metric"] - 0.05
    # The LiteRT file of the same int8 student: verified, and as accurate within a couple of images.
    tflite = result.report["formats"]["tflite"]["int8"]
    assert tflite["parity"]["passed"] and (tmp_path / "student_int8.tflite").is_file()
    assert abs(tflite["accuracy"] - acc) < 0.01


def test_stages_switch_off_and_the_baseline_gets_the_same_steps(digits):
    teacher, train, test = digits
    from compress.models import DemoCNN

    small = train.take(200)
    cfg = ScheduleConfig(prune=PruneConfig(channels=0.5), distill=None, qat=None, export=None)
    pruned = run_schedule(teacher, teacher, small, None, cfg, eval_data=test, progress=False)
    assert [s["stage"] for s in pruned.report["stages"]] == ["initial", "prune", "bn_reestimate"]
    assert pruned.int8 is None and pruned.report["files"] == {}
    assert sum(p.numel() for p in pruned.student.parameters()) < sum(p.numel() for p in teacher.parameters())

    cfg = ScheduleConfig(distill=DistillConfig(epochs=1, device="cpu"), export=None, baseline=True)
    torch.manual_seed(0)
    both = run_schedule(teacher, DemoCNN(width=4), small, None, cfg, transfer=train, eval_data=test,
                        progress=False)
    distilled = both.report["stages"][-1]
    assert distilled["stage"] == "distill" and distilled["steps"] == (200 // 32 + 1) + (len(train) // 32 + 1)
    assert both.report["baseline"]["steps"] == distilled["steps"]
    assert both.report["gain_over_baseline"] == pytest.approx(distilled["metric"] - both.report["baseline"]["metric"])


def test_config_refuses_inconsistent_stages():
    with pytest.raises(ConfigError, match="baseline"):
        ScheduleConfig(distill=None, baseline=True)
    with pytest.raises(ConfigError, match="qat"):
        ScheduleConfig(export=QuantizeOptions(qat=True))
