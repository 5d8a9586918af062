"""QuantSpec, qparams, observers and fake quantization against plain numpy formulas."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import ConfigError, DataError
from compress.quant import (
    ACT_INT8,
    WEIGHT_INT8,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    Quantizer,
    QuantSpec,
    fake_quantize,
    make_observer,
    qparams_from_range,
)
from compress.quant import reference as ref


@pytest.mark.parametrize(
    "spec, qmin, qmax",
    [
        (QuantSpec(bits=8, signed=True), -128, 127),
        (QuantSpec(bits=8, signed=False), 0, 255),
        (WEIGHT_INT8, -127, 127),
        (QuantSpec(bits=4, signed=True), -8, 7),
        (QuantSpec(bits=2, signed=False), 0, 3),
    ],
)
def test_spec_ranges(spec, qmin, qmax):
    assert (spec.qmin, spec.qmax) == (qmin, qmax)


@pytest.mark.parametrize("bits", [1, 9, 16, 8.0])
def test_spec_rejects_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits must be"):
        QuantSpec(bits=bits)


def test_asymmetric_qparams_match_textbook_formula():
    lo, hi = -0.7, 2.3
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), ACT_INT8)
    expect_scale = (hi - lo) / 255
    expect_zp = round(-128 - lo / expect_scale)
    assert float(scale) == pytest.approx(expect_scale, rel=1e-6)
    assert int(zp) == expect_zp
    # zero must be exactly representable
    assert ref.dequantize(ref.quantize(0.0, float(scale), int(zp), -128, 127), float(scale), int(zp)) == 0.0


def test_symmetric_per_channel_qparams():
    w = torch.tensor([[0.5, -1.27], [0.01, 0.02]])
    scale, zp = qparams_from_range(w.amin(1), w.amax(1), WEIGHT_INT8)
    np.testing.assert_allclose(scale.numpy(), [1.27 / 127, 0.02 / 127], rtol=1e-6)
    assert (zp == 0).all()


def test_fake_quantize_matches_numpy_reference_per_tensor():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * 3
    scale, zp = torch.tensor(0.023), torch.tensor(-5, dtype=torch.int32)
    got = fake_quantize(x, scale, zp, ACT_INT8).numpy()
    want = ref.fake_quantize(x.numpy(), 0.023, -5, -128, 127)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_fake_quantize_rounds_half_to_even_like_onnx():
    scale = torch.tensor(1.0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    got = fake_quantize(x, scale, torch.tensor(0, dtype=torch.int32), ACT_INT8)
    assert got.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


def test_fake_quantize_per_channel_matches_numpy():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, 3, 3, generator=g)
    amax = w.abs().amax(dim=(1, 2, 3))
    scale = amax / 127
    got = fake_quantize(w, scale, torch.zeros(4, dtype=torch.int32), WEIGHT_INT8).numpy()
    want = ref.fake_quantize(w.numpy(), scale.numpy(), 0, -127, 127, axis=0)
    np.testing.assert_allclose(got, want, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=50),
    st.floats(1e-3, 10.0),
    st.integers(-128, 127),
)
def test_fake_quantize_lands_on_grid(values, scale, zp):
    x = torch.tensor(values, dtype=torch.float32)
    y = fake_quantize(x, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), ACT_INT8)
    codes = y.double() / scale + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.min() >= -128 - 1e-3 and codes.max() <= 127 + 1e-3
    lo, hi = (-128 - zp) * scale, (127 - zp) * scale
    inside = (x >= lo) & (x <= hi)
    assert ((y - x).abs()[inside] <= scale / 2 + 1e-4 * scale + 1e-5).all()


def test_minmax_and_moving_average_observers():
    a, b = torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0])
    mm = MinMaxObserver(ACT_INT8)
    mm(a), mm(b)
    assert (float(mm.min_val), float(mm.max_val)) == (-3.0, 2.0)
    ma = MovingAverageMinMaxObserver(ACT_INT8, momentum=0.5)
    ma(a), ma(b)
    assert float(ma.min_val) == pytest.approx(-1 + 0.5 * (-3 + 1))
    assert float(ma.max_val) == pytest.approx(2 + 0.5 * (1 - 2))


def test_percentile_observer_ignores_rare_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    x[0] = 1000.0
    obs = PercentileObserver(ACT_INT8, percentile=99.9)
    obs(x)
    lo, hi = obs.range()
    want_lo, want_hi = np.percentile(x.numpy(), [0.1, 99.9])
    # histogram bins are (1000 + 4.5) / 2048 wide: the estimate is within one bin of numpy's percentile
    assert abs(float(hi) - want_hi) < 1.0 and abs(float(lo) - want_lo) < 1.0
    assert float(hi) < 10


def test_mse_observer_beats_minmax_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((50_000,))
    mse, mm = MSEObserver(ACT_INT8), MinMaxObserver(ACT_INT8)
    mse(x), mm(x)

    def error(obs):
        s, z = obs.qparams()
        return np.mean((ref.fake_quantize(x.numpy(), float(s), int(z), -128, 127) - x.numpy()) ** 2)

    assert error(mse) < error(mm)


def test_observer_rejects_nan():
    with pytest.raises(DataError, match="NaN"):
        MinMaxObserver(ACT_INT8)(torch.tensor([1.0, float("nan")]))


def test_observer_without_data_is_a_clear_error():
    with pytest.raises(DataError, match="saw no data"):
        MinMaxObserver(ACT_INT8).qparams()


def test_unknown_observer_kind():
    with pytest.raises(ConfigError, match="choose one of"):
        make_observer("kmeans", ACT_INT8)


def test_quantizer_lifecycle_and_freeze():
    q = Quantizer(ACT_INT8)
    x = torch.linspace(-1, 3, 101)
    assert torch.equal(q(x), x)  # observing: identity
    q.start_quantizing()
    y = q(x)
    assert not torch.equal(y, x)
    q.freeze()
    assert q.observer is None
    assert torch.equal(q(x), y)


def test_lsq_scale_receives_gradient_and_ste_masks_outside():
    q = Quantizer(ACT_INT8, learnable=True)
    q(torch.linspace(-1, 1, 100))
    q.start_quantizing()
    x = torch.tensor([0.3, 5.0], requires_grad=True)  # 5.0 is outside [-1, 1]
    q(x).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs() > 0
    assert x.grad[0] == 1.0 and x.grad[1] == 0.0
    q.freeze()
    assert not isinstance(q.scale, torch.nn.Parameter)


def test_reference_conv_matches_float_conv_when_unquantized():
    # The oracle must itself be right: integers in, integers out, equal to torch's conv on the same integers.
    g = np.random.default_rng(0)
    x = g.integers(-20, 20, size=(2, 4, 7, 7))
    w = g.integers(-5, 5, size=(4, 2, 3, 3))
    got = ref.conv_nd_int32(x, 0, w, None, stride=2, padding=1, dilation=1, groups=2)
    want = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                                      stride=2, padding=1, groups=2).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spec, axis_scale", [(ACT_INT8, None), (WEIGHT_INT8, 4)])
def test_training_path_matches_torch_kernel_values_and_gradients(spec, axis_scale):
    # The fast straight-through path used in training must agree with torch's fake-quant kernel.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2
    if axis_scale is None:
        scale, zp = torch.tensor(0.013), torch.tensor(7, dtype=torch.int32)
        ref_fn = lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zp, spec.qmin, spec.qmax)  # noqa: E731
    else:
        scale, zp = torch.rand(4, generator=g) * 0.02 + 0.005, torch.zeros(4, dtype=torch.int32)
        ref_fn = lambda t: torch.fake_quantize_per_channel_affine(t, scale, zp, 0, spec.qmin, spec.qmax)  # noqa: E731
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = fake_quantize(a, scale, zp, spec), ref_fn(b)
    s = scale if axis_scale is None else scale.reshape(-1, 1, 1, 1)
    codes_a, codes_b = (ya.detach() / s).round(), (yb.detach() / s).round()
    assert (codes_a - codes_b).abs().max() <= 1 and (codes_a == codes_b).float().mean() > 0.99
    ya.sum().backward()
    yb.sum().backward()
    # gradients may differ only where the two round a boundary value differently
    assert (a.grad != b.grad).float().mean() < 0.01
