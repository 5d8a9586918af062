"""derive_student: every other block with the teacher's weights (DistilBERT), or narrower through pruning."""

import pytest
import torch
from torch import nn

from compress.distill import derive_student
from compress.errors import ConfigError
from compress.models import DemoCNN


class Stack(nn.Module):
    """A transformer-like stack: embedding, 6 identical blocks in a ModuleList, a head."""

    def __init__(self, count_blocks: bool = False):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(6))
        self.head = nn.Linear(8, 2)
        self.count = 6 if count_blocks else None

    def forward(self, x):
        x = self.embed(x)
        blocks = [self.blocks[i] for i in range(self.count)] if self.count else self.blocks
        for block in blocks:
            x = x + block(x)
        return self.head(x)


def test_every_other_block_keeps_the_teachers_weights():
    torch.manual_seed(0)
    teacher = Stack()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = derive_student(teacher, "every-other", example_inputs=torch.randn(2, 4))
    assert len(student.blocks) == 3 and len(teacher.blocks) == 6
    for i, j in enumerate((0, 2, 4)):
        assert torch.equal(student.blocks[i][0].weight, teacher.blocks[j][0].weight)
    assert torch.equal(student.embed.weight, teacher.embed.weight)
    assert student.blocks[0][0].weight is not teacher.blocks[0][0].weight  # a copy: training it leaves the teacher
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # the student computes what the teacher computes with blocks 1, 3, 5 removed
    x = torch.randn(3, 4)
    with torch.no_grad():
        h = teacher.embed(x)
        for j in (0, 2, 4):
            h = h + teacher.blocks[j](h)
        assert torch.allclose(student(x), teacher.head(h))


def test_ratio_picks_evenly_spaced_blocks():
    teacher = Stack()
    student = derive_student(teacher, ratio=1 / 3)
    assert len(student.blocks) == 2
    assert torch.equal(student.blocks[1][0].weight, teacher.blocks[3][0].weight)


def test_a_forward_that_counts_its_blocks_is_reported():
    with pytest.raises(ConfigError, match="no longer runs.*narrow"):
        derive_student(Stack(count_blocks=True), example_inputs=torch.randn(2, 4))


def test_no_repeated_blocks_and_bad_options():
    with pytest.raises(ConfigError, match="no run of repeated blocks"):
        derive_student(DemoCNN(width=4))
    with pytest.raises(ConfigError, match="how must be"):
        derive_student(Stack(), "deeper")
    with pytest.raises(ConfigError, match="ratio"):
        derive_student(Stack(), ratio=1.0)
    with pytest.raises(ConfigError, match="needs example_inputs"):
        derive_student(DemoCNN(width=4), "narrow")

