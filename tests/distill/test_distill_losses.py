"""Each distillation loss against the formula written out in numpy (float64)."""

import numpy as np
import pytest
import torch

from compress.distill import (
    AttentionMatrixLoss,
    AttentionTransfer,
    FeatureLoss,
    HiddenStateLoss,
    KDLoss,
    ValueRelationLoss,
)
from compress.errors import ConfigError

RNG = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (8.0, 1.0)])
def test_kd_is_t_squared_kl_blended_with_cross_entropy(temperature, alpha):
    s, t = RNG.normal(size=(6, 5)) * 3, RNG.normal(size=(6, 5)) * 3
    y = RNG.integers(0, 5, 6)
    ps, pt = _softmax(s / temperature), _softmax(t / temperature)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    ce = np.mean(-np.log(_softmax(s)[np.arange(6), y]))
    want = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    loss = KDLoss(temperature, alpha)
    got = loss(_t(s), _t(t), torch.tensor(y))
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)
    parts = loss.components(_t(s), _t(t), torch.tensor(y))
    assert float(parts["kd"]) == pytest.approx(alpha * temperature ** 2 * kl, rel=1e-5, abs=1e-6)
    assert float(parts["ce"]) == pytest.approx((1 - alpha) * ce, rel=1e-5, abs=1e-6)


def test_kd_without_labels_is_the_full_weight_kd_term():
    s, t = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    ps, pt = _softmax(s / 2.0), _softmax(t / 2.0)
    want = 4.0 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    parts = KDLoss(2.0, 0.3).components(_t(s), _t(t))
    assert list(parts) == ["kd"]
    assert float(parts["kd"]) == pytest.approx(want, rel=1e-5)


def test_kd_gradient_scale_does_not_vanish_with_temperature():
    # The T² factor keeps the soft-target gradient constant as T grows (Hinton et al.): for large T it tends
    # to (s − t)/(C·N) for centred logits, where the unscaled KL's gradient would shrink as 1/T².
    s, t = RNG.normal(size=(8, 10)), RNG.normal(size=(8, 10))
    norms = []
    for temp in (8.0, 16.0):
        x = _t(s).requires_grad_()
        KDLoss(temp, 1.0)(x, _t(t)).backward()
        norms.append(float(x.grad.norm()))
    limit = np.linalg.norm((s - s.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))) / (10 * 8)
    assert norms[1] == pytest.approx(limit, rel=0.05)
    assert 0.9 < norms[1] / norms[0] < 1.1


def test_kd_rejects_bad_options_and_shapes():
    with pytest.raises(ConfigError, match="temperature"):
        KDLoss(0.0)
    with pytest.raises(ConfigError, match="alpha"):
        KDLoss(alpha=1.5)
    with pytest.raises(ConfigError, match="same number of classes"):
        KDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


def test_feature_mse_and_cosine():
    s, t = RNG.normal(size=(3, 4, 2, 2)), RNG.normal(size=(3, 4, 2, 2))
    assert float(FeatureLoss("a", "b")(_t(s), _t(t))) == pytest.approx(np.mean((s - t) ** 2), rel=1e-5)
    fs, ft = s.reshape(3, -1), t.reshape(3, -1)
    cos = np.sum(fs * ft, 1) / (np.linalg.norm(fs, axis=1) * np.linalg.norm(ft, axis=1))
    got = FeatureLoss("a", "b", kind="cosine", weight=2.0)(_t(s), _t(t))
    assert float(got) == pytest.approx(2.0 * np.mean(1 - cos), rel=1e-5)
    with pytest.raises(ConfigError, match="mse' or 'cosine"):
        FeatureLoss("a", "b", kind="l1")
    with pytest.raises(ConfigError, match="student feature"):
        FeatureLoss("a", "b")(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3))


def _at_numpy(f):
    q = np.sum(np.abs(f) ** 2, axis=1).reshape(len(f), -1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_attention_transfer_matches_zagoruyko_maps():
    # Different channel counts are fine: the map sums over channels.
    s, t = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 7, 4, 4))
    want = 500.0 * np.mean((_at_numpy(s) - _at_numpy(t)) ** 2)
    assert float(AttentionTransfer("a", "b")(_t(s), _t(t))) == pytest.approx(want, rel=1e-5)
    assert float(AttentionTransfer("a", "b", weight=1.0)(_t(s), _t(t))) == pytest.approx(want / 500, rel=1e-5)
    with pytest.raises(ConfigError, match="spatial sizes differ"):
        AttentionTransfer("a", "b")(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2))


def test_hidden_state_is_mse():
    s, t = RNG.normal(size=(2, 5, 8)), RNG.normal(size=(2, 5, 8))
    assert float(HiddenStateLoss("a", "b")(_t(s), _t(t))) == pytest.approx(np.mean((s - t) ** 2), rel=1e-5)


def test_attention_matrix_mse_masks_and_head_average():
    s, t = RNG.normal(size=(2, 4, 3, 3)), RNG.normal(size=(2, 4, 3, 3))
    t[0, 0, 0, 2] = s[1, 2, 1, 0] = -1e4  # masked scores count as 0
    s0, t0 = np.where(s <= -100, 0, s), np.where(t <= -100, 0, t)
    assert float(AttentionMatrixLoss("a", "b")(_t(s), _t(t))) == pytest.approx(np.mean((s0 - t0) ** 2), rel=1e-5)
    few = RNG.normal(size=(2, 2, 3, 3))  # 2 student heads vs 4 teacher heads: compare the head means
    want = np.mean((few.mean(1) - t0.mean(1)) ** 2)
    assert float(AttentionMatrixLoss("a", "b")(_t(few), _t(t0))) == pytest.approx(want, rel=1e-5)


def test_pair_losses_need_paths_and_positive_weights():
    with pytest.raises(ConfigError, match="teacher module path"):
        FeatureLoss("", "b")
    with pytest.raises(ConfigError, match="weight"):
        AttentionTransfer("a", "b", weight=0.0)


def test_value_relation_is_minilm_kl_per_head():
    heads = 2
    s, t = RNG.normal(size=(2, 5, 6)), RNG.normal(size=(2, 5, 10))  # widths differ: relations are [N, h, L, L]

    def relation(v):
        n, length, width = v.shape
        d = width // heads
        v = v.reshape(n, length, heads, d).transpose(0, 2, 1, 3)
        return _softmax(v @ v.transpose(0, 1, 3, 2) / np.sqrt(d))

    rs, rt = relation(s), relation(t)
    want = np.mean(np.sum(rt * (np.log(rt) - np.log(rs)), axis=-1))
    assert float(ValueRelationLoss("a", "b", heads=heads)(_t(s), _t(t))) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ConfigError, match="divisible by heads=4"):
        ValueRelationLoss("a", "b", heads=4)(_t(s), _t(t))
