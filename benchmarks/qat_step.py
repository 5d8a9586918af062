"""Time one training step (forward + backward + SGD) of a float, our-QAT or torch.ao-QAT model.

Runs inside a fresh process (compress.runtime.run_isolated), one contender per process, so the three
contenders do not share torch's thread pool, allocator caches or autograd state.
"""

from __future__ import annotations

import os
import time
import warnings

from nets import build_net  # benchmarks/ is on sys.path (the parent passes it on)


def _prepare_ours(model, example):
    from compress.passes import prepare

    return prepare(model, example, qat=True)


def _prepare_torch_ao(model, example):
    # DEPRECATED upstream (torch.ao.quantization is slated for removal); measured only as the reference peer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        return prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), (example,))


PREPARERS = {"float": None, "ours_qat": _prepare_ours, "torch_ao_qat": _prepare_torch_ao}


def measure_train_step(kind: str, arch: str, resolution: int, batch: int, warmup: int, steps: int,
                       threads: int, seed: int = 0) -> dict:
    """Build ``arch`` at ``resolution``², prepare it per ``kind``, and time ``steps`` SGD steps at ``batch``.

    Returns a measurement dict in the shape compress.runtime.compare_interleaved expects (``latency``,
    ``samples_s``), plus the preparation time and peak RSS.
    """
    import torch

    from compress.runtime.onnx_runner import peak_rss_bytes
    from compress.runtime.stats import LatencyStats

    if kind not in PREPARERS:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(PREPARERS)}")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = build_net(arch, seed, reestimate_bn=False).train()  # training sets its own statistics
    x = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(seed + 1))
    t0 = time.perf_counter()
    if PREPARERS[kind] is not None:
        model = PREPARERS[kind](model, x[:1]).train()
    prepare_s = time.perf_counter() - t0

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    samples = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            samples.append(time.perf_counter() - t)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{kind} training step produced a non-finite loss")
    return {"latency": LatencyStats.from_seconds(samples, batch=batch).to_dict(), "samples_s": samples,
            "prepare_s": prepare_s, "peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid(), "threads": threads}
