"""Parameter counts of any variant, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch

from .config import ModelConfig


def build_on_meta(cfg: ModelConfig):
    from .tokenizer import build_tokenizer
    from .vlm import ModVlm

    with torch.device("meta"):
        # The tokenizer only supplies the <image> id here; parameter shapes come from the config.
        return ModVlm(cfg, build_tokenizer(cfg.tokenizer))


def count_parameters(cfg: ModelConfig) -> int:
    return sum(p.numel() for p in build_on_meta(cfg).parameters())
