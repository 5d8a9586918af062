"""Students derived from the teacher: fewer blocks (DistilBERT's every other layer) or narrower (pruning).

Initialising the student from the teacher's own weights starts distillation far closer to the goal than a
random initialisation (Sanh et al. 2019 take every other layer of BERT; structured pruning keeps the most
important channels of every layer).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compress.errors import ConfigError

__all__ = ["derive_student"]

HOWS = ("every-other", "narrow")


def _signature(block: nn.Module) -> tuple:
    """Blocks are interchangeable when they are one class with the same parameter / buffer shapes."""
    return (type(block), tuple((k, tuple(v.shape)) for k, v in block.state_dict().items()))


def _runs(children: list[nn.Module]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of ≥ 2 consecutive interchangeable blocks holding parameters."""
    runs, i = [], 0
    while i < len(children):
        j = i + 1
        sig = _signature(children[i])
        while j < len(children) and _signature(children[j]) == sig:
            j += 1
        if j - i >= 2 and any(True for _ in children[i].parameters()):
            runs.append((i, j))
        i = j
    return runs


def _keep(n: int, ratio: float) -> list[int]:
    """Evenly spaced indices of ``round(n·ratio)`` (≥ 1) blocks, the first one included: 0, 2, 4 for 6 × 0.5."""
    k = max(1, round(n * ratio))
    return sorted({int(i * n / k) for i in range(k)})


def _every_other(teacher: nn.Module, ratio: float) -> tuple[nn.Module, list[str]]:
    student = copy.deepcopy(teacher)
    changed: list[str] = []
    done: list[str] = []
    containers = [(n, m) for n, m in student.named_modules() if isinstance(m, nn.Sequential | nn.ModuleList)]
    for name, container in sorted(containers, key=lambda nm: nm[0].count(".") if nm[0] else -1):
        if any(name.startswith(d + ".") for d in done):
            continue  # inside a block already kept or dropped as a whole
        children = list(container)
        runs = _runs(children)
        if not runs:
            continue
        keep = set(range(len(children)))
        for start, end in runs:
            kept = {start + i for i in _keep(end - start, ratio)}
            keep -= set(range(start, end)) - kept
            changed.append(f"{name or '<root>'}[{start}:{end}] keeps {sorted(kept)}")
        new_children = [c for i, c in enumerate(children) if i in keep]
        done.extend(f"{name}.{i}" if name else str(i) for i in range(len(children)))
        rebuilt = nn.Sequential(*new_children) if isinstance(container, nn.Sequential) else nn.ModuleList(new_children)
        if name:
            parent, _, leaf = name.rpartition(".")
            setattr(student.get_submodule(parent) if parent else student, leaf, rebuilt)
        else:  # the teacher itself is the stack
            student = rebuilt
    return student, changed


def derive_student(teacher: nn.Module, how: str = "every-other", ratio: float = 0.5, example_inputs=None) -> nn.Module:
    """A smaller student initialised from ``teacher`` (the teacher itself is not modified).

    Args:
        teacher: the trained model.
        how: ``every-other`` — keep ``ratio`` of the blocks (evenly spaced, the first kept) of every run of
            repeated blocks in an ``nn.Sequential`` / ``nn.ModuleList``, with their weights;
            ``narrow`` — the structured pruning pass removes ``1 − ratio`` of the channels of every prunable
            group, keeping the most important (the result is a captured graph module).
        ratio: the fraction of blocks (``every-other``) or channels (``narrow``) kept, in (0, 1).
        example_inputs: a batch the teacher runs on (≥ 2 samples); needed for ``narrow``, and used by
            ``every-other`` to check that the student still runs.

    Raises:
        ConfigError: an unknown ``how``, a ratio outside (0, 1), no repeated blocks, or a student that no
            longer runs (a forward that counts its blocks).

    Example:
        >>> teacher = nn.Sequential(nn.Linear(4, 8), nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)]),
        ...                         nn.Linear(8, 2))
        >>> student = derive_student(teacher)
        >>> len(student[1]), torch.equal(student[1][1].weight, teacher[1][2].weight)
        (2, True)
    """
    if how not in HOWS:
        raise ConfigError(f"derive_student how must be one of {', '.join(HOWS)}, got {how!r}")
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio must be in (0, 1) (the fraction kept), got {ratio}")
    example = None if example_inputs is None else (
        tuple(example_inputs) if isinstance(example_inputs, tuple | list) else (example_inputs,))
    if how == "narrow":
        if example is None:
            raise ConfigError("derive_student(how='narrow') needs example_inputs (a batch of ≥ 2 samples)")
        from compress.passes.prune import PruneConfig, prune

        was = teacher.training
        try:
            return prune(teacher, example, PruneConfig(channels=1.0 - ratio)).model
        finally:
            teacher.train(was)
    student, changed = _every_other(teacher, ratio)
    if not changed:
        raise ConfigError("the teacher has no run of repeated blocks in an nn.Sequential / nn.ModuleList to thin "
                          "out; use how='narrow' or give a student architecture")
    if example is not None:
        student.eval()
        try:
            with torch.no_grad():
                student(*example)
        except Exception as exc:  # the forward indexes blocks by a count fixed in __init__
            raise ConfigError(f"the derived student ({'; '.join(changed)}) no longer runs "
                              f"({str(exc).splitlines()[0][:120]}); use how='narrow' or a student architecture") \
                from exc
        student.train(teacher.training)
    return student
