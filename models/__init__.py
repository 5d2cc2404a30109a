"""modbench models: one decoder core (dense / γ-MoD / p-MoD), host front-ends, variants, ARank.

Importing the package imports nothing heavy: the names below load their module (and torch) at first use, so
`modbench.models.config`'s lists serve the CLI's --help without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .config import ModelConfig
    from .vlm import ModVlm

__all__ = [
    "ConfigError", "LlmConfig", "ModelConfig", "ModSpec", "VisionConfig", "ModCache", "ModForCausalLM",
    "ModOutput", "ModVlm", "build_model", "load", "get_variant", "greedy_generate", "list_variants", "register_variant",
]

_EXPORTED_FROM = {
    "ConfigError": "config", "LlmConfig": "config", "ModelConfig": "config", "ModSpec": "config",
    "VisionConfig": "config", "ModCache": "core", "ModForCausalLM": "core", "ModOutput": "core",
    "greedy_generate": "core", "get_variant": "variants", "list_variants": "variants",
    "register_variant": "variants", "ModVlm": "vlm",
}


def __getattr__(name: str):
    if name not in _EXPORTED_FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTED_FROM[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def torch_dtype(name: str):
    """The torch dtype of a config's dtype name (one of config.DTYPES)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load(path_or_hub_id: str, dtype: str | None = None, device_map: str | None = None,
         config: ModelConfig | None = None) -> ModVlm:
    """Load a released checkpoint layout (see models/checkpoints.py); never downloads. `config`: as
    `models.resolver.resolve` gave it (overrides applied), else read from the checkpoint."""
    from .checkpoints import load as _load

    return _load(path_or_hub_id, dtype=dtype, device_map=device_map, config=config)


def build_model(spec: str | ModelConfig, seed: int | None = None, device: str | torch.device = "cpu",
                tokenizer=None) -> ModVlm:
    """A randomly initialised model for a variant name or config (seeded locally; global RNG untouched)."""
    import torch

    from .tokenizer import build_tokenizer
    from .variants import get_variant
    from .vlm import ModVlm

    cfg = get_variant(spec) if isinstance(spec, str) else spec
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        model = ModVlm(cfg, tokenizer)
    return model.placed(device, torch_dtype(cfg.dtype)).eval()
