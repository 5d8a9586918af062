"""prepare → calibrate → convert on real nets, checked against the numpy integer reference."""

import numpy as np
import pytest
import torch
from torch import fx, nn

from compress.errors import ConfigError, DataError
from compress.layers import QuantConv2d, QuantConvBn2d, QuantLinear
from compress.models import DemoCNN, randomize_bn
from compress.passes import QATConfig, calibrate, convert, fold_bn, prepare, train_qat
from compress.quant import Quantizer, QuantState
from compress.quant import reference as ref


def _demo(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(DemoCNN()).eval()


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g)


def _quantizer_nodes(gm):
    mods = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(mods[n.target], Quantizer)]


def test_fold_bn_equals_conv_then_bn():
    conv, bn = nn.Conv2d(3, 5, 3, bias=True), randomize_bn(nn.Sequential(nn.BatchNorm2d(5)))[0].eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_prepare_places_one_quantizer_per_edge():
    gm = prepare(_demo(), _data(1))
    mods = dict(gm.named_modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules()), "BN must be folded"
    assert isinstance(gm.conv1, QuantConv2d) and isinstance(gm.fc, QuantLinear)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            assert isinstance(mods[next(iter(node.users)).target], Quantizer)
        if node.op == "call_module" and isinstance(mods[node.target], QuantConv2d):
            user = next(iter(node.users))
            # conv → relu: no quantizer in between (the int8 kernel clamps); conv → add: quantizer
            assert user.target in (torch.relu,) or isinstance(mods.get(user.target), nn.ReLU | Quantizer)
    # the residual add's inputs are both quantized tensors
    add = next(n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target))
    assert all(isinstance(mods[a.target], Quantizer) for a in add.args)
    assert gm.compress_info.capture == "export" and gm.compress_info.float_ops == []


def test_calibrated_model_tracks_float_model():
    model, x = _demo(), _data()
    gm = calibrate(prepare(model, x[:1]), [x[:32], x[32:]], progress=False)
    out_q, out_f = gm(x), model(x)
    lsb = float(next(m for m in gm.modules() if isinstance(m, Quantizer) and m is gm.fc_act_quant).scale)
    assert (out_q - out_f).abs().max() < 8 * lsb + 0.05 * out_f.abs().max()


def test_convert_freezes_everything_and_snaps_bias_to_int32_grid():
    gm = convert(calibrate(prepare(_demo(), _data(1)), [_data()], progress=False))
    for m in gm.modules():
        if isinstance(m, Quantizer):
            assert m.state is QuantState.FROZEN and m.observer is None
    layer = gm.head_conv
    assert layer.input_scale is not None
    pool = next(n for n in gm.graph.nodes if n.target == "pool")
    assert torch.equal(layer.input_scale, gm.get_submodule(pool.args[0].target).scale)  # found through the max pool
    codes = layer.quantized_bias().double() / (layer.input_scale * layer.weight_quant.scale).double()
    # float32 bias carries ~7 significant digits: codes are integers up to that precision
    torch.testing.assert_close(codes, codes.round(), atol=1e-6 * codes.abs().max().item() + 1e-3, rtol=0)


def test_first_conv_matches_numpy_integer_reference():
    """The torch simulation of conv→ReLU→requantize equals integer math (≤ 1 LSB)."""
    gm = convert(calibrate(prepare(_demo(), _data(1)), [_data()], progress=False))
    x = _data(8, seed=3)
    conv_node = next(n for n in gm.graph.nodes if n.target == "stem.0")
    relu_node = next(iter(conv_node.users))  # the ReLU, then its quantizer
    q_in, conv, q_out = gm.x_act_quant, gm.get_submodule("stem.0"), gm.get_submodule(next(iter(relu_node.users)).target)
    with torch.no_grad():
        sim = q_out(torch.relu(conv(q_in(x)))).numpy()
    s_in, z_in = float(q_in.scale), int(q_in.zero_point)
    s_w = conv.weight_quant.scale.numpy()
    s_out, z_out = float(q_out.scale), int(q_out.zero_point)
    xq = ref.quantize(x.numpy(), s_in, z_in, -128, 127)
    wq = ref.quantize(conv.weight.detach().numpy(), s_w, 0, -127, 127, axis=0)
    bq = ref.quantize_bias(conv.bias.detach().numpy(), s_in, s_w)
    acc = ref.conv_nd_int32(xq, z_in, wq, bq, stride=1, padding=1)
    out_q = ref.requantize(acc, s_in * s_w, s_out, z_out, qmin=z_out, qmax=127)  # ReLU: clamp at zero point
    sim_q = np.round(sim / s_out) + z_out
    diff = np.abs(sim_q - out_q)
    assert diff.max() <= 1 and np.mean(diff == 0) >= 0.99


def test_convert_before_calibrate_is_an_error():
    with pytest.raises(ConfigError, match="calibrate"):
        convert(prepare(_demo(), _data(1)))


def test_empty_calibration_set_is_an_error():
    with pytest.raises(DataError, match="empty"):
        calibrate(prepare(_demo(), _data(1)), [], progress=False)


def test_wrong_input_shape_is_a_data_error():
    with pytest.raises(DataError, match="shape"):
        prepare(_demo(), torch.rand(1, 3, 8, 8))


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = x * 2
        return self.b(torch.relu(self.a(x)))


def test_untraceable_model_falls_back_to_module_swap_and_reports():
    model = _Untraceable()
    gm = prepare(model, torch.randn(1, 4))
    assert gm.compress_info.capture == "module_swap"
    assert isinstance(gm.a, QuantLinear) and gm.a.input_quant is not None
    assert any("not traceable" in f.reason for f in gm.compress_info.float_ops)
    x = torch.randn(16, 4)
    q = convert(calibrate(gm, [x], progress=False))
    assert (q(x) - model(x)).abs().max() < 0.1


class _WithTransposedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)

    def forward(self, x):
        return self.up(torch.relu(self.conv(x)))


def test_unsupported_layer_stays_float_and_is_reported():
    # ConvTranspose2d gets int8 weights but no runtime has an int8 kernel for it here: listed as float compute.
    gm = prepare(_WithTransposedConv(), torch.randn(1, 1, 8, 8))
    listed = {f.name: f for f in gm.compress_info.float_ops}
    assert listed["up"].op == "QuantConvTranspose2d" and "float" in listed["up"].reason
    assert isinstance(gm.conv, QuantConv2d)
    # A grouped transposed conv has no int8 form at all: the layer itself stays float, weights included.
    model = _WithTransposedConv()
    model.up = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)
    gm = prepare(model, torch.randn(1, 1, 8, 8))
    assert type(gm.up) is nn.ConvTranspose2d
    assert any(f.name == "up" and "weights stay float" in f.reason for f in gm.compress_info.float_ops)


def test_keep_float_leaves_named_layer_alone():
    gm = prepare(_demo(), _data(1), keep_float=("fc",))
    assert type(gm.fc) is nn.Linear
    assert any(f.name == "fc" for f in gm.compress_info.float_ops)


def test_qat_fuses_conv_bn_keeps_stats_live_then_freezes():
    torch.manual_seed(0)
    x = _data(128)
    y = (x.mean(dim=(1, 2, 3)) > x.mean()).long()  # a learnable two-class task
    gm = prepare(_demo(), x[:1], qat=True)
    assert isinstance(gm.conv1, QuantConvBn2d) and gm.training
    calibrate(gm, [x], progress=False)
    before = gm.conv1.bn.running_mean.clone()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    losses = train_qat(gm, batches, QATConfig(epochs=6, lr=5e-3, freeze_bn_epochs=1), progress=False)
    assert not torch.equal(before, gm.conv1.bn.running_mean), "BN running stats must update during QAT"
    assert losses[-1] < losses[0]
    frozen = gm.conv1.bn.running_mean.clone()
    gm.train()
    gm(x[:32])
    assert torch.equal(frozen, gm.conv1.bn.running_mean), "frozen BN stats must not move"
    gm.eval()
    out_before = gm(x)
    q = convert(gm)
    assert isinstance(q.conv1, QuantConv2d) and not isinstance(q.conv1, QuantConvBn2d)
    # the folded conv computes what the fused QAT layer computed in eval mode
    assert (q(x) - out_before).abs().max() <= 2 * float(q.fc_act_quant.scale)


def test_qat_without_labels_is_an_error():
    gm = prepare(_demo(), _data(1), qat=True)
    calibrate(gm, [_data()], progress=False)
    with pytest.raises(DataError, match="labels"):
        train_qat(gm, [_data(8)], QATConfig(epochs=1), progress=False)


def test_prepared_model_is_a_graph_module_with_leaf_quant_layers():
    gm = prepare(_demo(), _data(1))
    assert isinstance(gm, fx.GraphModule)
    assert any(n.target == "conv1" for n in gm.graph.nodes)


def test_bare_torch_layer_is_prepared_as_a_module():
    gm = prepare(nn.Conv2d(2, 3, 3), torch.randn(1, 2, 6, 6))
    assert any(isinstance(m, QuantConv2d) for m in gm.modules())


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


def test_calibrate_accepts_several_inputs_per_batch():
    x, z = torch.randn(8, 4), torch.randn(8, 5)
    gm = prepare(_TwoInputs(), (x[:1], z[:1]))
    calibrate(gm, [((x, z), None), ((x, z),)], progress=False)
    q = convert(gm)
    assert q(x, z).shape == (8, 3)


def test_converted_model_survives_torch_save(tmp_path):
    # models.py uses `from __future__ import annotations`: string annotations used to break fx pickling
    gm = convert(calibrate(prepare(_demo(), _data(1)), [_data()], progress=False))
    torch.save(gm, tmp_path / "q.pt")
    loaded = torch.load(tmp_path / "q.pt", weights_only=False)
    x = _data(4, seed=9)
    assert torch.equal(loaded(x), gm(x))


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(torch.relu(self.shared(x)) * 3)


def test_module_called_twice_gets_one_quant_layer_per_call():
    x = torch.randn(32, 4)
    gm = convert(calibrate(prepare(_Tied(), x[:1]), [x], progress=False))
    layers = [m for m in gm.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 2
    assert not torch.equal(layers[0].input_scale, layers[1].input_scale)  # the two calls see different ranges


def test_bounded_ops_use_fixed_output_grids():
    model = nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=-1), nn.Linear(6, 3), nn.Tanh())
    x = torch.randn(16, 4) * 5
    gm = convert(calibrate(prepare(model, x[:1]), [x], progress=False))
    mods = dict(gm.named_modules())
    grids = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], Quantizer):
            src = node.args[0]
            name = getattr(src.target, "__name__", str(src.target))  # nn.Softmax is captured as torch.softmax
            grids[name] = (float(mods[node.target].scale), int(mods[node.target].zero_point))
    assert grids["softmax"] == (1 / 256, -128)  # softmax: [0, 1)
    assert grids["tanh"] == (1 / 128, 0)  # tanh: [-1, 1)
