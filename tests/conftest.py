"""Shared fixtures: tiny models saved in every supported format, .npz data files, and a CLI runner.

Test modules live in folders without ``__init__.py`` (``tests/io`` as a package would shadow the stdlib
``io``), so their file names must be unique across the tree: prefix them with the folder
(``test_io_data.py``, ``test_cli_quantize.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.models import DemoCNN

#: The --arch spec of :func:`tiny_cnn`; small enough that export + verification take well under a second.
TINY_ARCH = "compress.models:DemoCNN(width=4)"


def make_tiny_cnn(seed: int = 0) -> DemoCNN:
    """A DemoCNN with 4 channels, seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    from compress.models import randomize_bn

    torch.manual_seed(seed)
    return randomize_bn(DemoCNN(width=4), seed=seed).eval()


@pytest.fixture
def tiny_arch() -> str:
    return TINY_ARCH


@pytest.fixture
def tiny_cnn() -> DemoCNN:
    return make_tiny_cnn()


@pytest.fixture
def digits_like() -> tuple[np.ndarray, np.ndarray]:
    """48 random 'images' [48, 1, 8, 8] in [0, 1] and labels 0..9 (seeded)."""
    rng = np.random.default_rng(0)
    return rng.random((48, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 48)


@pytest.fixture
def write_npz(tmp_path: Path) -> Callable[..., Path]:
    """``write_npz(name, **arrays) -> path``: save arrays as ``tmp_path/name`` with np.savez."""

    def write(name: str, **arrays) -> Path:
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return write


@pytest.fixture
def calib_npz(write_npz, digits_like) -> Path:
    x, y = digits_like
    return write_npz("calib.npz", x=x, y=y)


@pytest.fixture
def state_dict_file(tmp_path: Path, tiny_cnn) -> Path:
    """``tiny_cnn``'s state dict saved with torch.save (load it with ``--arch TINY_ARCH``)."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_cnn.state_dict(), path)
    return path


@pytest.fixture
def pickled_model_file(tmp_path: Path, tiny_cnn) -> Path:
    """``tiny_cnn`` pickled whole (torch.save(model)): loads only with trust_pickle."""
    path = tmp_path / "tiny_full.pt"
    torch.save(tiny_cnn, path)
    return path


@pytest.fixture
def cli(tmp_path: Path, monkeypatch) -> Callable[..., object]:
    """``cli(*args) -> click Result``: run the ``compress`` command in ``tmp_path`` (stdout/stderr separate)."""
    from click.testing import CliRunner

    from compress.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str | Path):
        return runner.invoke(main, [str(a) for a in args])

    return invoke
