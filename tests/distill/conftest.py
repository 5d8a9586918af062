"""Fixtures of the distillation tests: one torch thread, a seeded teacher / student pair."""

from __future__ import annotations

import pytest
import torch

from tests.distill.distill_nets import TinyNet


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pair() -> tuple[TinyNet, TinyNet]:
    """(teacher width 8, student width 4), seeded; the teacher in eval mode."""
    torch.manual_seed(0)
    teacher = TinyNet(8).eval()
    torch.manual_seed(1)
    return teacher, TinyNet(4)
