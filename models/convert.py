"""Turning a dense model into a MoD model, as γ-MoD and p-MoD start their fine-tuning: every dense weight is
copied, only the routers are new (seeded)."""

from __future__ import annotations

import copy
import dataclasses

import torch

from .config import GAMMA_PATTERNS, ConfigError, ModSpec, validate_resolved
from .routing import build_routing


def mod_layers_by_pattern(num_layers: int, pattern: str) -> list[int]:
    """γ-MoD Table 1's hand-made deployments over the layers that may be MoD (1 .. L-2: the first and the last
    layer stay dense, as the authors keep them when generating): every one ("all"), every second ("1of2":
    1, 3, 5, ...), or two of every three ("2of3": 1, 2, 4, 5, ...)."""
    candidates = list(range(1, num_layers - 1))
    if pattern == "all":
        return candidates
    if pattern == "1of2":
        return candidates[::2]
    if pattern == "2of3":
        return [layer for i, layer in enumerate(candidates) if i % 3 != 2]
    raise ConfigError(f"mod pattern must be one of {GAMMA_PATTERNS}, got {pattern!r}")


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'3-30' or '1,2,5' or '1-3,7' -> sorted layer indices (checked against the depth)."""
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"mod layers: cannot read {part!r} (use e.g. '3-30' or '1,2,5')") from None
        layers.update(range(first, last + 1))
    bad = sorted(layer for layer in layers if not 0 <= layer < num_layers)
    if bad:
        raise ConfigError(f"mod layers {bad} are out of range [0, {num_layers})")
    return sorted(layers)


def convert_to_mod(model, mod: ModSpec, seed: int = 0, name: str | None = None):
    """A new ModVlm with `mod` routing whose every non-router weight is a copy of dense `model`'s; the routers
    are initialised from `seed` (γ-MoD: nn.Linear's default init, as the authors'; p-MoD: zeros, as released)."""
    from accelerate import init_empty_weights

    from .vlm import ModVlm, set_buffer

    if model.cfg.mod.scheme != "dense":
        raise ConfigError(f"convert_to_mod: the source model must be dense, not {model.cfg.mod.scheme!r}")
    cfg = dataclasses.replace(copy.deepcopy(model.cfg), mod=copy.deepcopy(mod), name=name or model.cfg.name)
    validate_resolved(cfg)  # the scheme's checks of `mod`, before anything is built
    with init_empty_weights(include_buffers=False):
        converted = ModVlm(cfg, model.tokenizer)
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    missing, unexpected = converted.load_state_dict(state, strict=False, assign=True)
    if unexpected or any(".routing." not in key for key in missing):
        raise RuntimeError(f"convert_to_mod: unexpected {unexpected[:5]}, missing {missing[:5]}")
    # the buffers no state dict carries (RoPE's frequencies, CLIP's position ids) were built on the CPU: the
    # dense model's, on its device and in its dtype
    for name, buf in model.named_buffers():
        set_buffer(converted, name, buf.detach().clone())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        routing = build_routing(cfg)
    converted.language_model.model.routing = routing.to(device=model.device, dtype=model.dtype)
    return converted.train(model.training)
