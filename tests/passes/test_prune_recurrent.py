"""LSTM / GRU hidden units removed physically: exact on dead units, through indexing, in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.passes.prune import PruneConfig, count_params, prune


class ConvRNN(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 3, padding=1)
        self.rnn = cell(8, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.conv(x)).transpose(1, 2))
        return self.fc(out[:, -1, :])


def _kill_units(rnn: nn.Module, dead: list[int]) -> None:
    """Zero the cell-candidate gate rows of ``dead`` units in every layer: from a zero state their output
    stays 0, so removing them must not change the model; their other rows shrink so L1 ranks them last."""
    h, n_gates = rnn.hidden_size, (4 if isinstance(rnn, nn.LSTM) else 3)
    cand = 2  # the candidate is gate 2 in both: LSTM [i, f, g, o], GRU [r, z, n]
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
                t = getattr(rnn, name)
                for g in range(n_gates):
                    t[[g * h + u for u in dead]] *= 0.0 if g == cand else 0.01


@pytest.mark.slow  # two captures
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_dead_hidden_units_are_removed_exactly(cell):
    torch.manual_seed(0)
    net = ConvRNN(cell).eval()
    dead = [0, 3, 4, 7, 8, 11]
    _kill_units(net.rnn, dead)
    x = torch.randn(2, 2, 10)
    result = prune(net, x, PruneConfig(channels=0.5, skip=("conv",)))
    groups = {g["key"]: g for g in result.plan["groups"]}
    assert groups["rnn"]["kept"] == sorted(set(range(12)) - set(dead))
    rnn = result.model.get_submodule("rnn")
    assert (rnn.hidden_size, rnn.weight_hh_l1.shape[1], result.model.get_submodule("fc").in_features) == (6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), net(x), rtol=1e-5, atol=1e-6)
    assert count_params(result.model) < count_params(net)


def test_input_channels_of_the_rnn_follow_the_conv_and_blocked_cases_say_why():
    torch.manual_seed(0)
    net = ConvRNN(nn.LSTM).eval()
    x = torch.randn(2, 2, 10)
    result = prune(net, x, PruneConfig(channels=0.5))
    rnn = result.model.get_submodule("rnn")
    assert (result.model.get_submodule("conv").out_channels, rnn.input_size, rnn.weight_ih_l0.shape) == (4, 4, (24, 4))
    with torch.no_grad():
        assert result.model(torch.randn(3, 2, 10)).shape == (3, 3)

    class Bi(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 6, bidirectional=True, batch_first=True)
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    why = prune(Bi().eval(), torch.randn(2, 5, 4), PruneConfig(channels=0.5)).plan["groups"]
    assert "bidirectional" in next(g for g in why if g["key"] == "rnn")["skipped"]


@pytest.mark.onnx
@pytest.mark.slow
def test_trained_audio_lstm_with_half_its_units_matches_onnxruntime(tmp_path):
    import onnxruntime as ort

    from compress.exporters import export_onnx
    from tests.zoo.train import evaluate, trained

    model, _, test = trained("audio_lstm")
    x = torch.from_numpy(test.x[:2])
    result = prune(model, x, PruneConfig(channels=0.5))
    assert result.model.get_submodule("lstm").hidden_size == 48
    export_onnx(result.model, (x[:1],), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    xs = test.x[:4]
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: xs[i:i + 1]})[0] for i in range(4)])
    with torch.no_grad():
        want = result.model(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert count_params(result.model) < 0.3 * count_params(model)
    # measured here: 1.000 before; half the conv channels and LSTM units removed: 0.637 before fine-tuning
    # (taylor 0.757), 0.993 after one epoch; 130,755 -> 33,379 parameters. 3 classes: chance is 0.33
    assert evaluate(result.model, test, "accuracy") > 0.5
