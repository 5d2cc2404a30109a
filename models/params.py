"""Parameter counts of any variant, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .config import ModelConfig


class _NoInitOnMeta(TorchFunctionMode):
    """While a model is built on the meta device, its weight initialisation is skipped: an in-place fill of a
    meta tensor has no values to write and keeps the shape, and some cost real time there (timm's trunc_normal_
    runs clamp_ and erfinv_ as Python decompositions on meta tensors: about a second for a ConvNeXt-L)."""

    INIT_OPS = frozenset({"uniform_", "normal_", "erfinv_", "clamp_", "mul_", "add_", "sub_", "div_", "fill_",
                          "zero_", "copy_", "exponential_", "log_normal_", "bernoulli_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (getattr(func, "__name__", "") in self.INIT_OPS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def build_on_meta(cfg: ModelConfig):
    from .tokenizer import build_tokenizer
    from .vlm import ModVlm

    with torch.device("meta"), _NoInitOnMeta():
        # The tokenizer only supplies the <image> id here; parameter shapes come from the config.
        return ModVlm(cfg, build_tokenizer(cfg.tokenizer))


def count_parameters(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in build_on_meta(cfg).parameters())
