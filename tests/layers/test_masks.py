"""Pruning masks on every weight layer: masked forward, zero gradients, finalize leaves no mask anywhere."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compress.layers import (
    QuantConv1d,
    QuantConv2d,
    QuantConvBn2d,
    QuantEmbedding,
    QuantGRU,
    QuantLinear,
    QuantLSTM,
    QuantMultiheadAttention,
)
from compress.layers.prune import finalize, get_mask, masked_tensors, original, prunable_tensors, set_mask

LAYERS = {
    "linear": (lambda: nn.Linear(8, 4), lambda: (torch.randn(3, 8),)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3), lambda: (torch.randn(2, 4, 9),)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3), lambda: (torch.randn(2, 4, 7, 7),)),
    "embedding": (lambda: nn.Embedding(10, 6), lambda: (torch.tensor([[1, 2, 9]]),)),
    "lstm": (lambda: nn.LSTM(4, 5, num_layers=2, bidirectional=True), lambda: (torch.randn(6, 2, 4),)),
    "gru": (lambda: nn.GRU(4, 5, batch_first=True), lambda: (torch.randn(2, 6, 4),)),
    "mha": (lambda: nn.MultiheadAttention(8, 2, batch_first=True), lambda: (torch.randn(2, 5, 8),) * 3),
    "quant_linear": (lambda: QuantLinear.from_float(nn.Linear(8, 4), quantize_io=True),
                     lambda: (torch.randn(3, 8),)),
    "quant_conv1d": (lambda: QuantConv1d.from_float(nn.Conv1d(4, 6, 3)), lambda: (torch.randn(2, 4, 9),)),
    "quant_conv2d": (lambda: QuantConv2d.from_float(nn.Conv2d(4, 6, 3, groups=2)),
                     lambda: (torch.randn(2, 4, 7, 7),)),
    "quant_conv_bn": (lambda: QuantConvBn2d.from_float(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)),
                      lambda: (torch.randn(2, 4, 7, 7),)),
    "quant_embedding": (lambda: QuantEmbedding.from_float(nn.Embedding(10, 6)),
                        lambda: (torch.tensor([[1, 2, 9]]),)),
    "quant_lstm": (lambda: QuantLSTM.from_float(nn.LSTM(4, 5, batch_first=True)), lambda: (torch.randn(2, 6, 4),)),
    "quant_gru": (lambda: QuantGRU.from_float(nn.GRU(4, 5, num_layers=2)), lambda: (torch.randn(6, 2, 4),)),
    "quant_mha": (lambda: QuantMultiheadAttention.from_float(nn.MultiheadAttention(8, 2, batch_first=True)),
                  lambda: (torch.randn(2, 5, 8),) * 3),
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _mask_all(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for path, m, name in prunable_tensors(module):
        w = getattr(m, name)
        masks[f"{path}.{name}"] = torch.rand(w.shape, generator=g) > 0.5
        set_mask(m, name, masks[f"{path}.{name}"])
    return masks


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_masked_forward_gradients_and_finalize(case):
    make, inputs = LAYERS[case]
    torch.manual_seed(0)
    module = make()
    x = inputs()
    reference = copy.deepcopy(module)
    masks = _mask_all(module)
    assert len(masks) == len(list(masked_tensors(module))) > 0
    # The reference computes with the same weights zeroed by hand: a masked layer must equal it.
    with torch.no_grad():
        for path, m, name in prunable_tensors(reference):
            getattr(m, name).mul_(masks[f"{path}.{name}"])
    module.eval(), reference.eval()
    y = _first(module(*x))
    torch.testing.assert_close(y, _first(reference(*x)))

    module.train()
    _first(module(*x)).float().pow(2).sum().backward()
    for path, m, name in prunable_tensors(module):
        grad = original(m, name).grad
        mask = masks[f"{path}.{name}"]
        assert grad is not None and bool((grad[~mask] == 0).all()), f"{path}.{name}: masked weights got gradients"
        assert bool((grad[mask] != 0).any()), f"{path}.{name}: kept weights got no gradient"

    module.eval()
    before = _first(module(*x)).detach()
    finalize(module)
    assert not list(masked_tensors(module))
    assert not [k for k in module.state_dict() if "mask" in k or "parametrizations" in k]
    assert set(module.state_dict()) == set(make().state_dict())
    assert "Parametrized" not in type(module).__name__
    for path, m, name in prunable_tensors(module):
        w = getattr(m, name)
        assert isinstance(w, nn.Parameter) and get_mask(m, name) is None
        assert bool((w[~masks[f"{path}.{name}"]] == 0).all())
    torch.testing.assert_close(_first(module(*x)), before)


def test_mask_survives_from_float_and_training_keeps_zeros():
    lin = nn.Linear(6, 4)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    set_mask(lin, "weight", mask)
    q = QuantLinear.from_float(lin)  # QAT after pruning keeps the pattern
    assert torch.equal(get_mask(q, "weight"), mask)
    opt = torch.optim.SGD(q.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        q(torch.randn(8, 6)).sum().backward()
        opt.step()
    assert bool((q.weight[~mask] == 0).all())
    assert torch.equal(finalize(q.to_float()).weight == 0, ~mask | (q.weight == 0))


def test_set_mask_rejects_wrong_shape():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        set_mask(nn.Linear(3, 2), "weight", torch.ones(3, 2, dtype=torch.bool))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.mark.onnx
def test_exported_onnx_holds_the_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    from compress.exporters import export_onnx

    torch.manual_seed(0)
    net = _Net().eval()
    _mask_all(net)
    finalize(net)
    x = torch.randn(1, 3, 8, 8)
    export_onnx(net, (x,), tmp_path / "m.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    big = [a for a in inits.values() if a.size in (8 * 3 * 9, 5 * 288)]
    assert len(big) == 2, sorted((k, v.shape) for k, v in inits.items())
    for a in big:
        assert 0.4 < float(np.mean(a == 0)) < 0.6
    assert not [k for k in inits if "mask" in k]


@pytest.mark.tflite
def test_exported_tflite_holds_the_zeros(tmp_path):
    import tflite

    from compress.exporters import export_tflite
    from compress.exporters.tflite import TFLiteExportConfig

    torch.manual_seed(0)
    net = _Net().eval()
    _mask_all(net)
    finalize(net)
    # written dense, so the zeros are in the buffers (sparse storage: tests/exporters/test_tflite_sparse.py)
    export_tflite(net, (torch.randn(1, 3, 8, 8),), tmp_path / "m.tflite", TFLiteExportConfig(sparse_weights=False))
    model = tflite.Model.GetRootAsModel((tmp_path / "m.tflite").read_bytes(), 0)
    arrays = [model.Buffers(i).DataAsNumpy() for i in range(model.BuffersLength())]
    weights = [np.frombuffer(a.tobytes(), np.float32) for a in arrays if not isinstance(a, int) and a.size]
    big = [w for w in weights if w.size in (8 * 3 * 9, 5 * 288)]
    assert len(big) == 2
    for w in big:
        assert 0.4 < float(np.mean(w == 0)) < 0.6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_train_on_cuda():
    torch.manual_seed(0)
    net = nn.Sequential(QuantConv2d.from_float(nn.Conv2d(3, 8, 3)), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 6 * 6, 4)).cuda()
    masks = _mask_all(net)
    assert all(get_mask(m, n).device.type == "cuda" for _, m, n in prunable_tensors(net))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3, 8, 8, device="cuda")).pow(2).sum().backward()
        opt.step()
    finalize(net.cpu())
    for path, m, name in prunable_tensors(net):
        assert bool((getattr(m, name)[~masks[f"{path}.{name}"]] == 0).all())
