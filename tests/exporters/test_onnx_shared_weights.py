"""Shared weights stay shared in ONNX (issue 7, item 4): a module called N times is written with one int8 copy.

``prepare`` gives every call of a module its own copy (its own input scale and quantizers) sharing the first
call's ``nn.Parameter``; the int8 codes of those copies are identical, and the graph builder stores identical
initializers once (and dequantizes them once).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.exporters import export_onnx, verify_onnx
from compress.passes import calibrate, convert, prepare

pytestmark = [pytest.mark.onnx, pytest.mark.slow]  # capture + calibration of a 20-step unrolled net: ~50 s


class Unrolled(nn.Module):
    """A decoder step unrolled ``steps`` times: one Linear and one GRU, called at every step."""

    def __init__(self, steps: int):
        super().__init__()
        self.fc = nn.Linear(256, 256)
        self.gru = nn.GRU(256, 128, batch_first=True)
        self.steps = steps

    def forward(self, x):
        h = None
        for _ in range(self.steps):
            x = torch.tanh(self.fc(x))
            y, h = self.gru(x.unsqueeze(1), h)
        return y.squeeze(1)


def _export(steps: int, tmp_path):
    import onnx

    torch.manual_seed(0)
    model = Unrolled(steps).eval()
    calib = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    qmodel = convert(calibrate(prepare(model, calib[:1]), [calib], progress=False))
    path = tmp_path / f"unrolled{steps}.onnx"
    info = export_onnx(qmodel, (calib[:2],), path)
    return model, qmodel, path, info, onnx.load(str(path))


def _int8_inits(proto, shape) -> list:
    import onnx

    return [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and list(i.dims) == shape]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    return _export(1, tmp), _export(20, tmp)


def test_a_module_called_20_times_has_one_int8_weight_initializer(files):
    (_, _, _, _, once), (_, _, _, _, twenty) = files
    for proto in (once, twenty):
        assert len(_int8_inits(proto, [256, 256])) == 1  # the Linear's weight
        assert len(_int8_inits(proto, [3 * 128, 256])) == 1  # the GRU's input weights (W)
        assert len(_int8_inits(proto, [3 * 128, 128])) == 1  # the GRU's recurrent weights (R)
    # ... dequantized once, read by every call
    dq_of_weight = [n for n in twenty.graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] == _int8_inits(twenty, [256, 256])[0].name]
    assert len(dq_of_weight) == 1
    gemms = [n for n in twenty.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 20 and {g.input[1] for g in gemms} == {dq_of_weight[0].output[0]}
    names = [i.name for i in twenty.graph.initializer]
    assert len(names) == len(set(names))


def test_a_shared_gru_weight_reaches_its_20_calls_through_one_node(files):
    # onnxruntime gives every reader of a DequantizeLinear its own copy (EnsureUniqueDQForNodeUnit): a GRU
    # weight read through one reshape per call was dequantized 20 times per run. One DQ, one reshape, 20 GRUs.
    import onnxruntime as ort

    (_, _, _, _, _), (_, _, path, _, twenty) = files
    readers: dict[str, list] = {}
    for n in twenty.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for shape in ([3 * 128, 256], [3 * 128, 128]):
        dq = [n for n in twenty.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] == _int8_inits(twenty, shape)[0].name]
        assert len(dq) == 1 and len(readers[dq[0].output[0]]) == 1, shape
        (reshape,) = readers[dq[0].output[0]]
        assert reshape.op_type == "Reshape" and {r.op_type for r in readers[reshape.output[0]]} == {"GRU"}
        assert len(readers[reshape.output[0]]) == 20
    # ... and onnxruntime's optimized graph keeps it that way: the big weights are dequantized twice, not 40 times.
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    import onnx

    opt = onnx.load(opts.optimized_model_filepath)
    big = {i.name for i in opt.graph.initializer if list(i.dims) in ([3 * 128, 256], [3 * 128, 128])}
    assert len([n for n in opt.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in big]) == 2


def test_the_20_call_file_is_close_to_the_single_call_file(files):
    (_, _, p1, _, _), (_, _, p20, _, _) = files
    once, twenty = p1.stat().st_size, p20.stat().st_size
    # Measured: 229 kB once, 362 kB for 20 calls (4.59 MB when every call stored its own int8 weights). What
    # remains per call is its own bias (int32 on that call's input-scale grid) and its GRU bias, ~7 kB.
    assert twenty < 1.7 * once, (once, twenty)


def test_the_shared_weight_file_computes_what_the_simulation_does(files):
    _, (_, qmodel, path, info, _) = files
    xs = [np.random.default_rng(i).standard_normal((b, 256)).astype(np.float32) for i, b in ((0, 1), (1, 5))]
    report = verify_onnx(path, qmodel, xs, info=info)
    assert report.passed, report.summary()
