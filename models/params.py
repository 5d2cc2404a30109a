"""Parameter counts of any variant, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .config import ModelConfig


class _NoInitOnMeta(TorchFunctionMode):
    """While a model is built on the meta device, its random weight initialisation is skipped: a random fill of
    a meta tensor has no values to write and keeps the shape, and some cost real time there (timm's
    trunc_normal_ runs erfinv_ and clamp_ as Python decompositions on meta tensors: about a second for a
    ConvNeXt-L). Only fills that cannot fail are skipped (the random draws, and clamp_ / erfinv_ without a
    tensor operand); anything that could raise on a shape still runs."""

    RANDOM_FILLS = frozenset({"uniform_", "normal_", "exponential_", "log_normal_", "bernoulli_", "erfinv_",
                              "clamp_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (getattr(func, "__name__", "") in self.RANDOM_FILLS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta
                and not any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values()))):
            return args[0]
        return func(*args, **kwargs)


def build_on_meta(cfg: ModelConfig):
    from .tokenizer import build_tokenizer
    from .vlm import ModVlm

    with torch.device("meta"), _NoInitOnMeta():
        # The tokenizer only supplies the <image> id here; parameter shapes come from the config.
        return ModVlm(cfg, build_tokenizer(cfg.tokenizer))


def count_parameters(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in build_on_meta(cfg).parameters())
