"""compress.io.data: .npz and MODULE:CALLABLE loading, validation, batching, check_fits."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from compress.errors import ConfigError, DataError
from compress.io import Dataset, check_fits, load_data

# ---------------------------------------------------------------- .npz


def test_npz_roundtrip_casts_to_float32_and_int64(write_npz):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3, 4)).astype(np.float64)
    y = rng.integers(0, 5, 7).astype(np.int32)
    ds = load_data(write_npz("d.npz", x=x, y=y))
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y, y)
    assert len(ds) == 7 and ds.sample_shape == (3, 4) and ds.source == "d.npz"


def test_npz_without_labels_and_uint8_inputs(write_npz):
    x = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    ds = load_data(str(write_npz("u8.npz", x=x)))
    assert ds.y is None
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))


def test_float_labels_that_are_whole_numbers_are_accepted(write_npz):
    ds = load_data(write_npz("f.npz", x=np.zeros((3, 2)), y=np.array([0.0, 2.0, 1.0])))
    assert ds.y.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((0, 1, 8, 8))}, "empty"),
        ({"x": np.array([[1.0, np.nan], [0.0, 1.0]])}, "NaN or inf"),
        ({"x": np.array([[1.0, 2.0], [np.inf, 1.0]])}, "first at index 1"),
        ({"x": np.array([[1e300, 0.0]])}, "beyond the float32 range"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "3 inputs x but 2 labels"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.5, 1.0])}, "not whole numbers"),
        ({"x": np.zeros((2, 2)), "y": np.eye(2)}, "argmax"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -1])}, "negative"),
        ({"x": np.array(["a", "b"])}, "numeric array"),
        ({"x": np.array(3.0)}, "scalar"),
        ({"y": np.array([0, 1])}, "no input arrays (found: y)"),
    ],
)
def test_bad_npz_contents_raise_one_line_data_error(write_npz, arrays, fragment):
    path = write_npz("bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_data(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        load_data(path)


def test_missing_file_and_directory_and_non_npz(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(tmp_path / "nope.npz")
    with pytest.raises(DataError, match="not found"):
        load_data("nope_without_suffix")
    with pytest.raises(DataError, match="directory"):
        load_data(tmp_path)
    text = tmp_path / "fake.npz"
    text.write_text("not a zip file at all")
    with pytest.raises(DataError, match="not an .npz file"):
        load_data(text)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 2)))
    with pytest.raises(DataError, match="single .npy"):
        load_data(npy)


def test_truncated_npz_is_reported_as_corrupt(write_npz):
    path = write_npz("t.npz", x=np.random.default_rng(0).random((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        load_data(path)


# ---------------------------------------------------------------- MODULE:CALLABLE

LOADER = textwrap.dedent(
    """
    import numpy as np
    import torch

    def xy_tensors():
        g = torch.Generator().manual_seed(0)
        return [(torch.rand(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])),
                (torch.rand(2, 1, 8, 8, generator=g), torch.tensor([4, 5]))]

    def x_arrays():
        for i in range(3):
            yield np.full((2, 5), float(i))

    def loader(n=6):
        ds = torch.utils.data.TensorDataset(torch.arange(n * 3, dtype=torch.float32).reshape(n, 3),
                                            torch.arange(n) % 3)
        return torch.utils.data.DataLoader(ds, batch_size=4)

    def empty():
        return []

    def broken():
        raise RuntimeError("disk on fire")

    def not_iterable():
        return 42

    def ragged():
        return [np.zeros((2, 3)), np.zeros((2, 4))]

    def mixed():
        return [(np.zeros((2, 3)), np.zeros(2)), np.zeros((2, 3))]

    def nan_batch():
        return [np.array([[0.0, np.nan]])]
    """
)


@pytest.fixture
def loader_file(tmp_path):
    path = tmp_path / "my_loader.py"
    path.write_text(LOADER)
    return path


def test_file_loader_concatenates_xy_batches(loader_file):
    ds = load_data(f"{loader_file}:xy_tensors")
    g = torch.Generator().manual_seed(0)
    expected = torch.cat([torch.rand(4, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)]).numpy()
    np.testing.assert_array_equal(ds.x, expected)
    assert ds.y.tolist() == [0, 1, 2, 3, 4, 5]


def test_file_loader_x_only_generator_and_dataloader_with_kwargs(loader_file):
    ds = load_data(f"{loader_file}:x_arrays")
    assert ds.y is None and ds.x.shape == (6, 5) and ds.x[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    dl = load_data(f"{loader_file}:loader(n=5)")
    np.testing.assert_array_equal(dl.x, np.arange(15, dtype=np.float32).reshape(5, 3))
    assert dl.y.tolist() == [0, 1, 2, 0, 1]


def test_module_loader_from_sys_path_and_from_working_directory(loader_file, monkeypatch):
    mod = "compress_test_loader_cwd"
    (loader_file.parent / f"{mod}.py").write_text(LOADER)
    monkeypatch.chdir(loader_file.parent)  # not on sys.path: found through the working-directory fallback
    assert len(load_data(f"{mod}:xy_tensors")) == 6
    monkeypatch.syspath_prepend(str(loader_file.parent))
    assert len(load_data(f"{mod}:x_arrays")) == 6


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("empty", "no batches"),
        ("broken", "raised RuntimeError: disk on fire"),
        ("not_iterable", "returned a int"),
        ("ragged", "one shape"),
        ("mixed", "with and without labels"),
        ("nan_batch", "NaN or inf"),
        ("missing_fn", "no attribute 'missing_fn'"),
    ],
)
def test_loader_failures_are_data_errors(loader_file, name, fragment):
    with pytest.raises(DataError, match=fragment):
        load_data(f"{loader_file}:{name}")


def test_unknown_module_and_bad_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="cannot import module 'no_such_mod_xyz'"):
        load_data("no_such_mod_xyz:fn")
    with pytest.raises(DataError, match="not found"):
        load_data(f"{tmp_path / 'absent.py'}:fn")
    with pytest.raises(DataError, match="literal"):
        load_data("numpy:zeros(shape=foo)")


# ---------------------------------------------------------------- Dataset


def test_batches_cover_every_sample_once_and_shuffle_is_seeded():
    x = np.arange(10, dtype=np.float32)[:, None]
    ds = Dataset(x, np.arange(10))
    plain = list(ds.batches(4))
    assert [len(xb) for xb, _ in plain] == [4, 4, 2]
    assert torch.cat([xb for xb, _ in plain]).flatten().tolist() == list(range(10))
    order_a = torch.cat([yb for _, yb in ds.batches(3, shuffle=True, seed=5)]).tolist()
    order_b = torch.cat([yb for _, yb in ds.batches(3, shuffle=True, seed=5)]).tolist()
    order_c = torch.cat([yb for _, yb in ds.batches(3, shuffle=True, seed=6)]).tolist()
    assert sorted(order_a) == list(range(10)) and order_a == order_b and order_a != order_c
    with pytest.raises(ConfigError):
        next(ds.batches(0))


def test_take_and_validation_in_constructor():
    ds = Dataset(np.zeros((5, 2)), np.arange(5), source="z")
    assert len(ds.take(3)) == 3 and ds.take(3).y.tolist() == [0, 1, 2]
    assert ds.take(99) is ds
    with pytest.raises(ConfigError):
        ds.take(0)
    with pytest.raises(DataError, match="empty"):
        Dataset(np.zeros((0, 2)))
    with pytest.raises(DataError, match="NaN"):
        Dataset(torch.tensor([[float("nan")]]))


# ---------------------------------------------------------------- check_fits


def test_check_fits_accepts_matching_data_and_keeps_training_mode(tiny_cnn):
    tiny_cnn.train()
    out = check_fits(tiny_cnn, Dataset(np.zeros((3, 1, 8, 8))))
    assert out.shape == (2, 10)
    assert tiny_cnn.training


def test_check_fits_turns_shape_errors_into_data_error(tiny_cnn):
    with pytest.raises(DataError) as info:
        check_fits(tiny_cnn, Dataset(np.zeros((3, 3, 8, 8)), source="rgb.npz"))
    message = str(info.value)
    assert "[3, 3, 8, 8]" in message and "rgb.npz" in message
    assert "stem.0 (Conv2d) takes [N, 1, H, W]" in message
    with pytest.raises(DataError, match=r"Linear\) takes \[N, \.\.\., 6\]"):
        check_fits(nn.Sequential(nn.Linear(6, 2)), Dataset(np.zeros((2, 5))))


def test_integer_inputs_follow_the_model():
    import numpy as np
    from torch import nn

    from compress.io import Dataset, match_model_dtype

    ids = Dataset(np.arange(12).reshape(4, 3) % 5)
    assert ids.x.dtype == np.int64
    assert match_model_dtype(nn.Embedding(5, 2), ids).x.dtype == np.int64
    images = Dataset(np.full((4, 3), 200, np.uint8))
    fitted = match_model_dtype(nn.Linear(3, 2), images)
    assert fitted.x.dtype == np.float32 and fitted.x[0, 0] == 200.0
