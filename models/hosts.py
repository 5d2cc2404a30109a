"""Host families: what each front-end module declares about itself, and the registry the generic code reads.

A host family is one module (models/llava.py, llava_next.py, llava_hr.py, mgm_hd.py) holding a `HOST_FAMILY`:
its vision front-end and that front-end's geometry, the authors' key layout, the config.json `model_type` each
routing scheme is released under on it, and its config.json vision fields both ways. `ModelConfig.family` is the
one field that names it. models/vlm.py (building), models/checkpoints.py (reading and writing) and the checks of a
config against its family (`validate_for_family`, run with its routing scheme's checks by config.validate_resolved
where a config is resolved or built and by `ModelConfig.num_image_tokens`) look families up here and name none of
them.

Adding a host family: a new module with a `HOST_FAMILY`, listed in BUILTIN_MODULES, or registered from
elsewhere with `register_host_family` (as tests/test_host_families.py does). Importing a front-end module
registers nothing: the registry reads BUILTIN_MODULES when asked.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

from .config import FRONT_END_FIELDS, ConfigError, ModelConfig, VisionConfig

BUILTIN_MODULES = ("modbench.models.llava", "modbench.models.llava_next", "modbench.models.llava_hr",
                   "modbench.models.mgm_hd")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match the model; the message names file and key."""


class KeyLayout(NamedTuple):
    """(our prefix, their prefix) pairs, first match wins, and the ConvNeXt layer-scale name in their keys (ours
    are timm's, which call it `gamma`). tests/fixtures/authors_layouts/ lists the authors' keys."""

    name: str
    prefixes: tuple[tuple[str, str], ...]
    layer_scale: str = "gamma"


@dataclass(frozen=True)
class Release:
    """How the authors released one routing scheme on one host: config.json's model_type and architectures."""

    model_type: str
    architecture: str


@dataclass(frozen=True)
class ConfigSource:
    """What a family's config.json reader may look at. `shapes()` reads the weights' names and shapes (file
    headers, never a tensor) on first use: only the ConvNeXt hosts need it."""

    conf: dict
    directory: Path
    shapes: Callable[[], dict[str, tuple[int, ...]]]

    @property
    def where(self) -> Path:
        return self.directory / "config.json"


@dataclass(frozen=True)
class HfLayout:
    """transformers' llava-hf layout of a host (read; written only for parity tests)."""

    model_type: str
    layout: KeyLayout
    legacy_prefixes: tuple[tuple[str, str], ...]  # (new, old): the hub's older names, renamed on reading
    read_vision: Callable[[VisionConfig, dict], None]  # the top-level config.json into `vision`, in place


def _nothing(*_args) -> None:
    return None


def patch_grid_tokens(vision: VisionConfig) -> int:
    """One CLIP view: (image_size / patch_size)^2 tokens (LLaVA-1.5's geometry)."""
    return (vision.image_size // vision.patch_size) ** 2


@dataclass(frozen=True)
class HostFamily:
    name: str  # ModelConfig.family
    frontend: Callable[[ModelConfig], object]  # the nn.Module ModVlm holds as `vision`
    layout: KeyLayout  # the authors' key names
    releases: Mapping[str, Release]  # scheme -> release; a scheme not listed has no released layout here
    # config.json's vision fields: into a VisionConfig (CLIP dims already set; in place), and back
    read_vision: Callable[[VisionConfig, ConfigSource], None] = _nothing
    write_vision: Callable[[ModelConfig], dict] = lambda cfg: {}
    # Among families released under the same model_type, the one whose `claims` accepts config.json; the one
    # without `claims` is the fallback (LLaVA-1.5 under "llava").
    claims: Callable[[dict], bool] | None = None
    hf: HfLayout | None = None
    # its front-end's geometry: the image tokens of its VisionConfig (the largest image), and the checks of the
    # fields its front-end needs (a ConfigError naming the field)
    image_tokens: Callable[[VisionConfig], int] = patch_grid_tokens
    check_vision: Callable[[VisionConfig], None] = _nothing
    # the VisionConfig fields of config.FRONT_END_FIELDS its front-end reads (a config setting another is refused)
    vision_fields: frozenset[str] = frozenset()
    # of its image tokens, those of the base (low-resolution) view that p-MoD's "vision_hr" target leaves unrouted
    base_view_tokens: Callable[[VisionConfig], int] = lambda vision: 0
    # the `vision.kind` older records wrote for this family, checked and dropped when they are read (a family
    # added since has none)
    legacy_vision_kind: str = ""

    def release(self, scheme: str) -> Release:
        if scheme not in self.releases:
            raise ValueError(f"no released layout for {scheme} on {self.name} (released: {sorted(self.releases)})")
        return self.releases[scheme]


_REGISTERED: dict[str, HostFamily] = {}


def host_families() -> dict[str, HostFamily]:
    """Every family: the built-in modules' (imported on first use) and the registered ones."""
    families = {}
    for module in BUILTIN_MODULES:
        family = importlib.import_module(module).HOST_FAMILY
        families[family.name] = family
    families.update(_REGISTERED)
    return families


def host_family(name: str) -> HostFamily:
    families = host_families()
    if name not in families:
        raise ConfigError(f"family: unknown host family {name!r}; known: {sorted(families)}")
    return families[name]


def validate_for_family(cfg: ModelConfig) -> ModelConfig:
    """`cfg` checked against its family's front-end: the family exists, the config sets only the vision fields it
    reads (config.FRONT_END_FIELDS; moving a config to another family must not silently drop the first family's),
    and its own checks (HostFamily.check_vision). Run, with the routing scheme's checks, wherever a config is
    resolved or built (config.validate_resolved); `ModelConfig` itself checks what needs no family
    (config.validate)."""
    family = host_family(cfg.family)
    vision = cfg.vision
    if vision is not None:
        default = VisionConfig()
        for name in FRONT_END_FIELDS:
            if name not in family.vision_fields and getattr(vision, name) != getattr(default, name):
                reads = ", ".join(sorted(family.vision_fields)) or "none of them"
                raise ConfigError(f"vision.{name} is set, but family {cfg.family!r}'s front-end does not read it "
                                  f"(of {', '.join(FRONT_END_FIELDS)} it reads {reads})")
        family.check_vision(vision)
    return cfg


def register_host_family(family: HostFamily) -> HostFamily:
    """Add a family defined outside BUILTIN_MODULES (a name no other family has)."""
    families = host_families()
    if family.name in families:
        raise ValueError(f"host family {family.name!r} is already registered")
    if family.claims is None:  # one fallback per model_type, else which family a config.json is would be arbitrary
        for other in families.values():
            shared = {r.model_type for r in other.releases.values()} & {r.model_type for r in family.releases.values()}
            if other.claims is None and shared:
                raise ValueError(f"host family {family.name!r}: {other.name!r} is already the fallback for "
                                 f"{sorted(shared)}; give {family.name!r} a `claims` test")
    _REGISTERED[family.name] = family
    return family


def unregister_host_family(name: str) -> None:
    del _REGISTERED[name]


@contextmanager
def registered(family: HostFamily) -> Iterator[HostFamily]:
    """The family registered for the duration of a `with` block (tests: nothing outlives them)."""
    register_host_family(family)
    try:
        yield family
    finally:
        unregister_host_family(family.name)
