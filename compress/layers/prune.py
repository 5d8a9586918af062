"""Pruning masks on weight tensors: attached with torch's parametrization, baked in by :func:`finalize`.

A mask is a boolean buffer beside the weight it masks; every forward computes ``weight * mask``, so masked
entries contribute nothing and receive zero gradient (the product's derivative is the mask). Training keeps
the sparsity pattern on CPU and CUDA alike: the mask is created on the weight's device and moves with the
module. Parametrization (``torch.nn.utils.parametrize``) is used rather than a forward hook because every
reader of ``module.weight`` — the quant layers' ``quantized_weight()``, BN folding, the exporters, an LSTM's
flat weights — then sees the masked tensor without knowing masks exist.

A mask only zeroes values: it makes nothing smaller until :func:`finalize` replaces each masked weight by a
plain parameter holding ``weight * mask`` and drops the mask, so no mask tensor survives in a saved state dict
or an exported file (the complaint of pytorch#36214 about masks that never shrink anything).

Example:
    >>> from torch import nn
    >>> lin = nn.Linear(4, 2)
    >>> set_mask(lin, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    >>> float((lin.weight == 0).float().mean())
    0.5
    >>> sorted(finalize(lin).state_dict())
    ['bias', 'weight']
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from compress.errors import ConfigError


class WeightMask(nn.Module):
    """The parametrization ``weight -> weight * mask`` (``mask``: a boolean buffer of the weight's shape)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _mask_module(module: nn.Module, name: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    found = [p for p in module.parametrizations[name] if isinstance(p, WeightMask)]
    return found[0] if found else None


def original(module: nn.Module, name: str) -> torch.Tensor:
    """The unmasked parameter behind ``module.<name>`` (the tensor the optimizer updates)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The boolean mask on ``module.<name>`` (True = kept), or None when the tensor is not masked."""
    mask = _mask_module(module, name)
    return None if mask is None else mask.mask


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` with ``mask`` (True = kept), replacing any mask it already carries.

    The masked-out entries of the stored parameter are zeroed too, so magnitudes read later (the next pruning
    step, an optimizer's weight decay) start from what the forward computes.

    Raises:
        ConfigError: ``module`` has no tensor ``name`` or the mask's shape differs from it.
    """
    weight = original(module, name) if hasattr(module, name) else None
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor {name!r} to mask")
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask of shape {tuple(mask.shape)} does not fit {type(module).__name__}.{name} of "
                          f"shape {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=torch.bool)
    existing = _mask_module(module, name)
    if existing is not None:
        existing.mask = mask
    else:
        # unsafe=False checks the parametrization keeps shape and dtype, which a mask always does.
        parametrize.register_parametrization(module, name, WeightMask(mask))
    with torch.no_grad():
        original(module, name).mul_(mask)


def _refresh_rnn(module: nn.Module) -> None:
    # nn.LSTM / nn.GRU keep a list of their weight tensors (_flat_weights) that must point at the new
    # parameters once the parametrization is gone.
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def remove_mask(module: nn.Module, name: str) -> None:
    """Bake the mask of ``module.<name>`` into the parameter (``weight * mask``) and drop the mask."""
    if _mask_module(module, name) is None:
        return
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    _refresh_rnn(module)


def masked_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Every masked tensor of ``model``: ``(module path, module, tensor name)``."""
    for path, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            if _mask_module(module, name) is not None:
                yield path, module, name


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask of ``model`` into its weights, in place; returns ``model``.

    Afterwards the modules are their original classes again (``type(m) is nn.Conv2d``), the state dict holds
    the same keys as before masking, and the zeros are in the weights themselves.
    """
    for _path, module, name in list(masked_tensors(model)):
        remove_mask(module, name)
    return model


# -- the tensors pruning works on ---------------------------------------------------------------------------
_RNN = (nn.LSTM, nn.GRU, nn.RNN)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.Embedding)


def prunable_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """The weight matrices pruning may mask: ``(module path, module, tensor name)``, in module order.

    Convolutions, linears (attention output projections included), embeddings, the q/k/v projections of
    ``nn.MultiheadAttention`` and every ``weight_ih`` / ``weight_hh`` of LSTM / GRU / RNN. Biases and
    normalization parameters are never masked: they are few and pruning them changes every output.

    Example:
        >>> from torch import nn
        >>> [(p, n) for p, _, n in prunable_tensors(nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)))]
        [('0', 'weight'), ('1', 'weight_ih_l0'), ('1', 'weight_hh_l0')]
    """
    found = []
    for path, module in model.named_modules():
        if isinstance(module, _RNN):
            names = [n for n in module._flat_weights_names if n.startswith("weight")]
        elif isinstance(module, nn.MultiheadAttention):
            names = ["in_proj_weight"] if module._qkv_same_embed_dim else list(
                ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
        elif isinstance(module, _WEIGHT_LAYERS):
            names = ["weight"]
        else:
            continue
        found.extend((path, module, n) for n in names if isinstance(getattr(module, n, None), torch.Tensor))
    return found


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros of every prunable tensor, keyed ``"path.name"`` (masked or already finalized)."""
    return {f"{path}.{name}" if path else name: float((getattr(m, name) == 0).float().mean())
            for path, m, name in prunable_tensors(model)}
