"""Named model variants: one config entry each, registered through `register_variant`."""

from __future__ import annotations

import copy
import dataclasses

from .config import ConfigError, LlmConfig, ModelConfig, ModSpec, VisionConfig
from .tokenizer import TINY_VOCAB_SIZE

_VARIANTS: dict[str, ModelConfig] = {}


def register_variant(cfg: ModelConfig) -> ModelConfig:
    if cfg.name in _VARIANTS:
        raise ConfigError(f"variant {cfg.name!r} is registered twice")
    _VARIANTS[cfg.name] = cfg
    return cfg


def get_variant(name: str) -> ModelConfig:
    """A copy of a registered variant's config (callers may change it freely)."""
    if name not in _VARIANTS:
        raise ConfigError(f"unknown model variant {name!r}; known: {', '.join(sorted(_VARIANTS))}")
    return copy.deepcopy(_VARIANTS[name])


def list_variants() -> list[ModelConfig]:
    return [copy.deepcopy(cfg) for cfg in _VARIANTS.values()]


def with_mod(cfg: ModelConfig, name: str, mod: ModSpec, hub_id: str = "") -> ModelConfig:
    """The same host with another MoD spec (an MoD variant is its dense host plus a spec)."""
    return dataclasses.replace(copy.deepcopy(cfg), name=name, mod=mod, hub_id=hub_id)


# --- LLaVA-1.5 ---------------------------------------------------------------------------------------------
VICUNA_7B = LlmConfig(num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, intermediate_size=11008,
                      vocab_size=32000, rope_theta=10000.0, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L_336 = VisionConfig(kind="clip", image_size=336, patch_size=14, hidden_size=1024, num_layers=24,
                          num_heads=16, intermediate_size=4096)

LLAVA_15_7B = register_variant(ModelConfig(
    name="llava-1.5-7b", family="llava", llm=VICUNA_7B, vision=CLIP_L_336, hub_id="liuhaotian/llava-v1.5-7b",
    dtype="float16",
))
register_variant(with_mod(LLAVA_15_7B, "pmod-llava-1.5-7b", ModSpec(scheme="pmod"),
                          hub_id="MCG-NJU/p-MoD-LLaVA-v1.5-7B"))

# --- tiny twins (CPU, seconds) -----------------------------------------------------------------------------
TINY_LLM = LlmConfig(num_layers=6, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                     vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=2048)
TINY_CLIP = VisionConfig(kind="clip", image_size=32, patch_size=8, hidden_size=32, num_layers=3, num_heads=2,
                         intermediate_size=64)

TINY_LLAVA = register_variant(ModelConfig(name="tiny-llava", family="llava", llm=TINY_LLM, vision=TINY_CLIP,
                                          tiny=True))
# γ-MoD keeps layer 0 and the last layer dense.
register_variant(with_mod(TINY_LLAVA, "tiny-llava-gmod", ModSpec(scheme="gamma", layers=[1, 2, 3, 4])))
register_variant(with_mod(TINY_LLAVA, "tiny-llava-pmod", ModSpec(scheme="pmod")))
