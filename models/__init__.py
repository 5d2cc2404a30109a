"""modbench models: one decoder core (dense / γ-MoD / p-MoD), host front-ends, variants, ARank."""

from __future__ import annotations

import torch

from .config import ConfigError, LlmConfig, ModelConfig, ModSpec, VisionConfig
from .core import ModCache, ModForCausalLM, ModOutput, greedy_generate
from .variants import get_variant, list_variants, register_variant
from .vlm import ModVlm

__all__ = [
    "ConfigError", "LlmConfig", "ModelConfig", "ModSpec", "VisionConfig", "ModCache", "ModForCausalLM",
    "ModOutput", "ModVlm", "build_model", "load", "get_variant", "greedy_generate", "list_variants", "register_variant",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def load(path_or_hub_id: str, dtype: str | None = None, device_map: str | None = None,
         config: ModelConfig | None = None) -> ModVlm:
    """Load a released checkpoint layout (see models/checkpoints.py); never downloads. `config`: as
    `models.resolver.resolve` gave it (overrides applied), else read from the checkpoint."""
    from .checkpoints import load as _load

    return _load(path_or_hub_id, dtype=dtype, device_map=device_map, config=config)


def build_model(spec: str | ModelConfig, seed: int | None = None, device: str | torch.device = "cpu",
                tokenizer=None) -> ModVlm:
    """A randomly initialised model for a variant name or config (seeded locally; global RNG untouched)."""
    from .tokenizer import build_tokenizer

    cfg = get_variant(spec) if isinstance(spec, str) else spec
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        model = ModVlm(cfg, tokenizer)
    return model.to(device=device, dtype=torch_dtype(cfg.dtype)).eval()
