"""DDP: two gloo processes distilling on the same data give one process's loss and weights.

Each rank takes every other batch of size B; DDP averages their gradients, which is one process's gradient on
the union, a batch of 2B (every loss is a batch mean, and TinyNet has no BatchNorm). The teacher is replicated
on both ranks, not wrapped; the student and its feature adapter are. A second run mixes one labelled batch
with transfer batches, so the ranks see different loss parts and must still agree.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from compress.distill import DistillConfig, distill
from tests.distill.distill_nets import TinyNet, make_data

FEATURES = dict(losses=("kd", "feature"), features=(("conv2", "conv1"),))


def _models():
    torch.manual_seed(0)
    teacher = TinyNet(8).eval()
    torch.manual_seed(1)
    return teacher, TinyNet(4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        teacher, student = _models()
        cfg = DistillConfig(epochs=2, batch_size=8, lr=1e-2, device="cpu", **FEATURES)
        result = distill(teacher, student, make_data(64), cfg, progress=False)
        # One labelled batch among seven transfer batches: only one rank sees labels in an epoch.
        teacher, student = _models()
        mixed = distill(teacher, student, make_data(8), cfg, transfer=make_data(56, seed=1, labelled=False),
                        progress=False)
        torch.save({"history": result.history, "state": result.student.state_dict(), "steps": result.steps,
                    "mixed_history": mixed.history, "mixed_state": mixed.student.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_one_process_loss(tmp_path):
    if not torch.distributed.is_available():
        pytest.fail("torch.distributed is not available in this torch build")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    teacher, student = _models()
    cfg = DistillConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu", **FEATURES)
    single = distill(teacher, student, make_data(64), cfg, progress=False)

    assert ranks[0]["steps"] == ranks[1]["steps"] == single.steps == 8
    for r in ranks:
        for got, want in zip(r["history"], single.history, strict=True):
            for key in ("loss", "kd", "ce", "feature"):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    for k, v in single.student.state_dict().items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k  # the ranks agree exactly
        assert torch.allclose(ranks[0]["state"][k], v, rtol=1e-4, atol=1e-5), k
        assert torch.equal(ranks[0]["mixed_state"][k], ranks[1]["mixed_state"][k]), k
    # the epoch means are pooled over ranks: both report ce, from the one rank that had the labelled batch
    assert ranks[0]["mixed_history"] == [{**r, "seconds": ranks[0]["mixed_history"][i]["seconds"]}
                                         for i, r in enumerate(ranks[1]["mixed_history"])]
    assert all("ce" in r for r in ranks[0]["mixed_history"])
