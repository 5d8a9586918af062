"""Data with several inputs: named .npz arrays, loaders yielding tuples / dicts, binding to forward's parameters."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import DataError
from compress.io import Dataset, bind_inputs, check_fits, load_data, match_model_dtype
from compress.passes import QATConfig, calibrate, prepare, train_qat

N, L, VOCAB = 12, 6, 10


class IdsAndMask(nn.Module):
    """forward(input_ids, attention_mask): embedding, masked mean, linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        return self.head((self.emb(input_ids) * attention_mask.unsqueeze(-1)).mean(1))


class IdsAndFeatures(nn.Module):
    """An embedding (integer ids) beside a linear layer (real features): each integer input decided alone."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 4)
        self.lin = nn.Linear(3, 4)

    def forward(self, ids, features, scale=None):
        return self.emb(ids).mean(1) + self.lin(features)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (N, L))
    mask = (rng.random((N, L)) > 0.3).astype(np.float32)
    return ids, mask, rng.integers(0, 2, N)


def test_npz_arrays_named_after_forward_are_inputs_in_forward_order(write_npz):
    ids, mask, y = _arrays()
    # Saved in the "wrong" order: binding follows forward's signature, not the file.
    ds = load_data(write_npz("two.npz", attention_mask=mask, input_ids=ids, y=y))
    assert ds.names == ("attention_mask", "input_ids") and len(ds) == N and ds.y.tolist() == y.tolist()
    assert ds.inputs["input_ids"].dtype == np.int64 and ds.inputs["attention_mask"].dtype == np.float32
    assert ds.sample_shapes == {"attention_mask": (L,), "input_ids": (L,)}
    model = IdsAndMask().eval()
    bound = match_model_dtype(model, ds)
    assert bound.names == ("input_ids", "attention_mask")
    np.testing.assert_array_equal(bound.arrays[0], ids)
    out = check_fits(model, bound)
    with torch.no_grad():
        want = model(torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
    torch.testing.assert_close(out, want)


def test_x_of_a_multi_input_set_is_a_clear_error_and_single_inputs_keep_x():
    ids, mask, _ = _arrays()
    ds = Dataset({"input_ids": ids, "attention_mask": mask}, source="two.npz")
    with pytest.raises(DataError, match=r"2 inputs \(input_ids, attention_mask\).*\.inputs\[name\]"):
        ds.x  # noqa: B018
    one = Dataset({"input_ids": ids})
    assert one.x is one.inputs["input_ids"] and one.sample_shape == (L,)


def test_batches_take_and_example_carry_every_input():
    ids, mask, y = _arrays()
    ds = Dataset({"input_ids": ids, "attention_mask": mask}, y)
    seen = []
    for (a, m), yb in ds.batches(5, shuffle=True, seed=3):
        assert a.dtype == torch.int64 and m.dtype == torch.float32 and len(a) == len(m) == len(yb)
        # Rows stay aligned across inputs and labels when shuffled.
        for row_ids, row_mask, label in zip(a.numpy(), m.numpy(), yb.numpy(), strict=True):
            i = int(np.flatnonzero((ids == row_ids).all(1) & (mask == row_mask).all(1))[0])
            assert y[i] == label
            seen.append(i)
    assert sorted(seen) == list(range(N))
    small = ds.take(4)
    assert small.names == ds.names and len(small) == 4 and small.y.tolist() == y[:4].tolist()
    ex = ds.example(2)
    assert [tuple(t.shape) for t in ex] == [(2, L), (2, L)]


def test_positional_names_x0_x1_bind_by_index(write_npz):
    ids, mask, _ = _arrays()
    ds = load_data(write_npz("pos.npz", x1=mask, x0=ids))
    bound = bind_inputs(IdsAndMask(), ds)
    assert bound.names == ("x0", "x1")
    np.testing.assert_array_equal(bound.arrays[1], mask)
    assert Dataset((ids, mask)).names == ("x0", "x1")


@pytest.mark.parametrize(
    ("arrays", "fragments"),
    [
        # A misspelt name: which is unknown, which is missing, and what forward takes.
        ({"input_ids": "ids", "attn_mask": "mask"},
         ["IdsAndMask.forward(input_ids, attention_mask)", "unknown attn_mask", "missing attention_mask"]),
        # One input for a model that needs two.
        ({"input_ids": "ids", "y": "y"}, ["1 input (input_ids)", "needs 2"]),
        # Three inputs for two parameters.
        ({"input_ids": "ids", "attention_mask": "mask", "extra": "mask"}, ["3 inputs", "takes 2"]),
    ],
)
def test_names_that_do_not_match_forward_are_one_line_data_errors(write_npz, arrays, fragments):
    ids, mask, y = _arrays()
    values = {"ids": ids, "mask": mask, "y": y}
    ds = load_data(write_npz("bad.npz", **{k: values[v] for k, v in arrays.items()}))
    with pytest.raises(DataError) as info:
        match_model_dtype(IdsAndMask(), ds)
    message = str(info.value)
    assert "\n" not in message and "bad.npz" in message
    for fragment in fragments:
        assert fragment in message


def test_a_gap_in_forward_order_is_refused():
    class ThreeInputs(nn.Module):
        def forward(self, a, b=None, c=None):
            return a

    ds = Dataset({"a": np.zeros((2, 1)), "c": np.zeros((2, 1))})
    with pytest.raises(DataError, match="takes 'b' before 'c'"):
        bind_inputs(ThreeInputs(), ds)


def test_inputs_with_different_sample_counts_are_refused(write_npz):
    ids, mask, _ = _arrays()
    with pytest.raises(DataError, match=r"different sample counts \(input_ids 12, attention_mask 11\)"):
        load_data(write_npz("n.npz", input_ids=ids, attention_mask=mask[:-1]))


def test_each_input_is_validated_and_named_in_the_message(write_npz):
    ids, mask, _ = _arrays()
    mask[3, 2] = np.nan
    with pytest.raises(DataError, match=r"data attention_mask from n\.npz has NaN or inf values in 1 of 12 samples"):
        load_data(write_npz("n.npz", input_ids=ids, attention_mask=mask))
    with pytest.raises(DataError, match="lists y among the inputs"):
        Dataset({"x": ids, "y": ids})


def test_integer_inputs_stay_integer_only_where_the_model_takes_integers():
    rng = np.random.default_rng(0)
    ds = Dataset({"features": rng.integers(0, 255, (N, 3)).astype(np.uint8), "ids": rng.integers(0, VOCAB, (N, L))})
    bound = match_model_dtype(IdsAndFeatures(), ds)
    assert bound.names == ("ids", "features")
    assert bound.inputs["ids"].dtype == np.int64  # the embedding takes it as is
    assert bound.inputs["features"].dtype == np.float32  # the linear layer needs real values
    check_fits(IdsAndFeatures(), bound)


LOADERS = textwrap.dedent(
    """
    import numpy as np
    import torch

    def _parts(i):
        rng = np.random.default_rng(i)
        return rng.integers(0, 10, (3, 6)), (rng.random((3, 6)) > 0.3).astype(np.float32), np.array([0, 1, i % 2])

    def tuples():
        for i in range(3):
            ids, mask, y = _parts(i)
            yield (ids, mask), y

    def tuples_unlabelled():
        for i in range(3):
            ids, mask, _ = _parts(i)
            yield (torch.from_numpy(ids), torch.from_numpy(mask)),

    def dicts():
        for i in range(3):
            ids, mask, y = _parts(i)
            yield {"attention_mask": mask, "input_ids": ids, "labels": y}

    def dataloader():
        samples = [((torch.tensor(a), torch.tensor(m)), int(t)) for i in range(3) for a, m, t in zip(*_parts(i))]
        return torch.utils.data.DataLoader(samples, batch_size=4)

    def changing_names():
        ids, mask, y = _parts(0)
        return [{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids, "mask": mask}]

    def uneven():
        ids, mask, y = _parts(0)
        return [((ids, mask[:2]), y)]
    """
)


@pytest.fixture
def loaders(tmp_path):
    path = tmp_path / "multi_loaders.py"
    path.write_text(LOADERS)
    return path


def _expected():
    rng_parts = [np.random.default_rng(i) for i in range(3)]
    ids = np.concatenate([r.integers(0, 10, (3, 6)) for r in rng_parts])
    return ids


@pytest.mark.parametrize(("name", "names", "labelled"), [
    ("tuples", ("x0", "x1"), True),
    ("tuples_unlabelled", ("x0", "x1"), False),
    ("dicts", ("attention_mask", "input_ids"), True),
    ("dataloader", ("x0", "x1"), True),
])
def test_loaders_yielding_tuples_or_dicts(loaders, name, names, labelled):
    ds = load_data(f"{loaders}:{name}")
    assert ds.names == names and len(ds) == 9 and (ds.y is not None) == labelled
    bound = match_model_dtype(IdsAndMask(), ds)
    assert bound.names[0] in ("x0", "input_ids")
    np.testing.assert_array_equal(bound.arrays[0], _expected())
    if labelled:
        assert ds.y.tolist() == [0, 1, 0, 0, 1, 1, 0, 1, 0]
    check_fits(IdsAndMask(), bound)


@pytest.mark.parametrize(("name", "fragment"), [
    ("changing_names", "same inputs in every batch"),
    ("uneven", "different batch sizes"),
])
def test_inconsistent_loaders_are_data_errors(loaders, name, fragment):
    with pytest.raises(DataError, match=fragment):
        load_data(f"{loaders}:{name}")


def test_calibrate_and_qat_feed_every_input():
    torch.manual_seed(0)
    ids, mask, _ = _arrays()
    y = (ids * mask > 4).any(1).astype(np.int64)
    ds = match_model_dtype(IdsAndMask(), Dataset({"attention_mask": mask, "input_ids": ids}, y))
    model = IdsAndMask().eval()
    prepared = prepare(model, ds.example(1), qat=True)
    calibrate(prepared, ds, batch_size=4, progress=False)
    before = [p.detach().clone() for p in prepared.parameters()]
    history = train_qat(prepared, ds, QATConfig(epochs=2, lr=1e-2, batch_size=4), progress=False)
    assert len(history) == 2 and all(np.isfinite(history))
    assert any(not torch.equal(b, p) for b, p in zip(before, prepared.parameters(), strict=True))


def test_a_multi_input_dataset_pickles_and_stays_immutable():
    import copy
    import pickle

    ids, mask, y = _arrays()
    ds = Dataset({"input_ids": ids, "attention_mask": mask}, y, source="two.npz")
    for clone in (pickle.loads(pickle.dumps(ds)), copy.deepcopy(ds)):
        assert clone.names == ds.names and clone.source == "two.npz" and clone.y.tolist() == y.tolist()
        np.testing.assert_array_equal(clone.inputs["attention_mask"], mask)
    with pytest.raises(AttributeError, match="immutable"):
        ds.y = None
    with pytest.raises(TypeError):
        ds.inputs["input_ids"] = ids  # the mapping is read-only
