"""The zoo itself: every model trains to its stated metric, runs at batch 1 and 3, and torch.export captures it.

These need only torch: they hold whatever the library's state, so the capture / registry / exporter work can
rely on the zoo being correct. The end-to-end pipeline checks are in test_zoo_pipeline.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .data import BERT_MAX_LEN, PAD, S2S_STEPS, S2S_VOCAB, token_order
from .models_vision import Conv2dSame
from .train import ZOO, task_data, train_result

NAMES = sorted(ZOO)
_INPUTS: dict[str, tuple[torch.Tensor, ...]] = {}


def sample_inputs(name: str, n: int) -> tuple[torch.Tensor, ...]:
    """The first ``n`` test inputs of the model's task (real data: padding, lengths, dtypes as trained)."""
    if name not in _INPUTS:
        _, test = task_data(ZOO[name])
        _INPUTS[name] = test.take(8).tensors()
    return tuple(t[:n] for t in _INPUTS[name])


def built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ZOO[name].build().eval()


# The output each model must produce for a batch of n (what the harness' metrics read).
EXPECTED_SHAPE = {
    "shape_checked": lambda n: (n, 10), "bert": lambda n: (n, 2), "bert_two_input": lambda n: (n, 2),
    "efficient_lite": lambda n: (n, 10), "resnet": lambda n: (n, 10), "audio_lstm": lambda n: (n, 3),
    "gru_seq2seq": lambda n: (n, S2S_STEPS, S2S_VOCAB), "unet": lambda n: (n, 3, 32, 32),
}


def test_every_model_has_an_expected_shape():
    assert set(EXPECTED_SHAPE) == set(ZOO)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_trains_to_its_stated_metric(name):
    # Cached on disk after the first run (tests/zoo/train.py); the first run trains (≤ ~10 s a model).
    r = train_result(name)
    assert r.metric >= ZOO[name].target, (
        f"{name} reached {ZOO[name].metric} {r.metric:.3f} < target {ZOO[name].target} (trained in {r.train_s:.1f} s)")
    assert not r.model.training


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_forward_runs_at_batch_size(name, batch):
    model = built(name)
    with torch.no_grad():
        out = model(*sample_inputs(name, batch))
    assert tuple(out.shape) == EXPECTED_SHAPE[name](batch)
    assert torch.isfinite(out).all()


def test_batch_of_three_equals_three_batches_of_one():
    # The sample dimension must be independent everywhere (BatchNorm in eval, masks per row, decoder per row).
    for name in NAMES:
        model = built(name)
        inputs = sample_inputs(name, 3)
        with torch.no_grad():
            whole = model(*inputs)
            rows = torch.cat([model(*(t[i:i + 1] for t in inputs)) for i in range(3)])
        torch.testing.assert_close(whole, rows, rtol=1e-4, atol=1e-5, msg=name)


def test_bert_variants_agree_with_the_same_weights():
    one, two = built("bert"), ZOO["bert_two_input"].build().eval()
    two.load_state_dict(one.state_dict())  # one state dict fits both (same modules, mask is the only difference)
    _, test = token_order(0, n=64, n_test=32, with_mask=True)
    ids, mask = test.tensors()
    assert (ids == PAD).any(), "the test needs padded rows, or the mask does nothing"
    with torch.no_grad():
        torch.testing.assert_close(one(ids), two(ids, mask), rtol=1e-5, atol=1e-6)
        # ...and the mask matters: attending to padding changes the result.
        assert not torch.allclose(two(ids, mask), two(ids, torch.ones_like(mask)), atol=1e-4)


def test_bert_position_ids_is_a_sliced_buffer():
    emb = built("bert").embeddings
    assert "position_ids" in dict(emb.named_buffers())
    assert emb.position_ids.shape == (1, ZOO["bert"].build().config.max_position_embeddings)
    assert BERT_MAX_LEN < emb.position_ids.shape[1]  # sliced [:, :seq_len], never used whole


def test_shape_check_rejects_wrong_input_size():
    with pytest.raises(ValueError, match="28, 28"):
        built("shape_checked")(torch.zeros(1, 1, 32, 32))


def test_conv2d_same_matches_tensorflow_same_padding():
    # TF SAME at stride 2 on an even size pads one extra row/column at the bottom/right: the output equals
    # a symmetric-padded conv evaluated on the shifted grid, and its size is ceil(in / stride).
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [0, 1, 0, 1]), conv.weight, conv.bias, 2)
    out = conv(x)
    assert out.shape[-2:] == (4, 4)
    torch.testing.assert_close(out, ref)


def test_seq2seq_shares_its_embedding_and_feeds_back_argmax():
    model = built("gru_seq2seq")
    assert model.decoder.embedding is model.encoder.embedding
    # Greedy decoding feeds step i's argmax into step i + 1; teacher forcing feeds target[:, i] there. With the
    # greedy tokens as the target both must agree, which holds only if the argmax really is fed back.
    src = sample_inputs("gru_seq2seq", 3)[0]
    with torch.no_grad():
        greedy = model(src)
        torch.testing.assert_close(model(src, target_tensor=greedy.argmax(-1)), greedy)
        other = model(src, target_tensor=(greedy.argmax(-1) + 1) % S2S_VOCAB)
    assert not torch.allclose(other[:, 1:], greedy[:, 1:]), "the decoder ignores its fed-back input"


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))


@pytest.mark.slow  # 0.2-6 s a model
@pytest.mark.parametrize("name", NAMES)
def test_torch_export_captures_with_a_dynamic_batch(name):
    # What the capture work builds on: one ATen graph, batch dimension dynamic, same numbers as eager.
    model = built(name)
    program = _export(model, sample_inputs(name, 2))
    module = program.module()
    for batch in (1, 3):
        inputs = sample_inputs(name, batch)
        with torch.no_grad():
            torch.testing.assert_close(module(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets, "empty graph"


def test_data_is_deterministic():
    for name in ("bert", "audio_lstm", "unet"):
        a, b = task_data(ZOO[name])[1], task_data(ZOO[name])[1]
        for k in a.inputs:
            np.testing.assert_array_equal(a.inputs[k], b.inputs[k])
        np.testing.assert_array_equal(a.y, b.y)
