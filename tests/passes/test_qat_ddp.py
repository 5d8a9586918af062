"""QAT under torch.distributed: 2 CPU processes with the gloo backend, as torchrun would launch them."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compress.models import DemoCNN, randomize_bn
from compress.passes import QATConfig, calibrate, prepare, train_qat


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = randomize_bn(DemoCNN()).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.rand(128, 1, 8, 8, generator=g)
        y = (x.mean(dim=(1, 2, 3)) > x.mean()).long()
        gm = prepare(model, x[:1], qat=True)
        calibrate(gm, [x], progress=False)
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 128, 16)]
        losses = train_qat(gm, batches, QATConfig(epochs=3, lr=5e-3, device="cpu"), progress=False)
        torch.save({"state": gm.state_dict(), "losses": losses}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_qat_two_ranks_end_with_identical_weights():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(2, init_file, tmp), nprocs=2, join=True)
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=False)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=False)
    for name, value in r0["state"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and "weight" in name:
            torch.testing.assert_close(value, r1["state"][name], msg=f"{name} differs between ranks")
    assert r0["losses"][-1] < r0["losses"][0]
    # each rank saw a different half of the data, so their losses differ: sharding really happened
    assert r0["losses"] != r1["losses"]
