"""Every architecture of the zoo (tests/zoo: public-code idioms) captured by torch.export and raised.

The zoo models are untrained here (capture does not care about the weights); the reference is the eager model
at a batch size other than the example's.
"""

from __future__ import annotations

import pytest
import torch

from compress.capture import capture
from compress.layers import QuantLayerMixin
from compress.ops import quant_class_for
from compress.passes import prepare
from tests.zoo.train import ZOO, task_data


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_captured_exactly_and_prepared_with_export(name):
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().eval()
    _, test = task_data(entry)
    gm = capture(model, test.tensors(0, 2))
    inputs = test.tensors(2, 7)
    with torch.no_grad():
        got, want = gm(*inputs), model(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    prepared = prepare(model, test.tensors(0, 1))
    assert prepared.compress_info.capture == "export"
    # Every layer with a quant layer in the registry was swapped (ConvTranspose2d has none yet).
    floats = [n for n, m in prepared.named_modules() if quant_class_for(m) is not None]
    assert floats == [], f"weight layers left float: {floats}"
    assert any(isinstance(m, QuantLayerMixin) for m in prepared.modules())
