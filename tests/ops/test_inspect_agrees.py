"""`compress inspect`'s verdicts are prepare()'s: on every zoo model, the ops describe() calls float are exactly
the ops prepare() reports in float_ops, and every weight layer inspect calls int8 is one prepare swapped."""

from __future__ import annotations

import pytest
import torch

from compress.passes import describe, prepare
from tests.zoo.train import ZOO, task_data


@pytest.mark.parametrize("name", sorted(ZOO))
def test_describe_and_float_ops_agree_on_the_zoo(name):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().eval()
    _train, test = task_data(entry)
    example = tuple(torch.from_numpy(a[:2]) for a in test.inputs.values())
    prepared = prepare(model, example)
    rows = describe(prepared)
    assert rows, f"{name}: no graph captured ({prepared.compress_info.capture})"
    float_rows = {r.node for r in rows if "float" in r.verdict or "mapping" in r.verdict}
    assert float_rows == {f.name for f in prepared.compress_info.float_ops}
    quant_rows = {r.module for r in rows if r.verdict.startswith("Quant")}
    assert quant_rows == set(prepared.compress_info.quantized_layers)
    # The weight layers of the user's model that capture found are int8 unless reported: nothing silently float.
    weighted = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    reported = {f.name for f in prepared.compress_info.float_ops}
    missing = weighted - quant_rows - reported
    assert not {m for m in missing if any(r.module == m for r in rows)}, f"{name}: silently float: {missing}"
