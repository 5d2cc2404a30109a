"""One resolver: what a model name stands for — a registered variant, a checkpoint directory or a cached hub id —
as a frozen config, before any weight is read. A variant with a hub id stands for its released checkpoint.

Every command, the lmms-eval plugin and the matrix go through `resolve`; the plugin records what it resolved
(`records.model.json` beside its records) and the suite reads that record instead of resolving again.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, ModelConfig, validate_resolved
from .variants import get_variant, variant_entry, variant_names

VARIANT, CHECKPOINT = "variant", "checkpoint"


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as given
    source: str  # VARIANT (built from its config, seeded random weights) or CHECKPOINT (a released variant too)
    checkpoint: str  # the checkpoint directory; "" for a variant
    layout: str  # the checkpoint's released layout (models.checkpoints.detect); "" for a variant
    config_json: str  # the ModelConfig with the overrides applied, as JSON: immutable, and recordable as is

    @property
    def config(self) -> ModelConfig:
        """A fresh copy each time: what was resolved cannot be changed behind the record's back."""
        return ModelConfig.from_dict(json.loads(self.config_json))

    def to_record(self) -> dict:
        return {"name": self.name, "source": self.source, "checkpoint": self.checkpoint, "layout": self.layout,
                "config": json.loads(self.config_json)}

    @classmethod
    def from_record(cls, record: dict) -> "ResolvedModel":
        return cls(record["name"], record["source"], record["checkpoint"], record["layout"],
                   _as_json(ModelConfig.from_dict(record["config"])))


def _as_json(cfg: ModelConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def is_variant(name: str) -> bool:
    return name in variant_names()


def model_name_error(name: str) -> str | None:
    """None when `name` is a registered variant or an existing path / hub-id-shaped name, else why not, with
    the closest variant names (a typo must not read as a missing checkpoint directory)."""
    variants = variant_names()
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if name in variants or Path(name).expanduser().exists() or hub_id:
        return None  # a hub id is looked up in the local cache, which says if it is absent
    close = difflib.get_close_matches(name, variants, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "`modbench models` lists the variants"
    return f"model {name!r} is neither a registered variant nor a checkpoint directory; {hint}"


def with_overrides(cfg: ModelConfig, overrides: dict) -> ModelConfig:
    """`cfg` with fields replaced by dotted name ("dtype", "mod.fixed_skip"); an unknown field is an error."""
    data = cfg.to_dict()
    for dotted, value in overrides.items():
        node, *path = data, *dotted.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {dotted!r}: no field {'.'.join(path[:depth + 1])!r} in the model config")
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node[part]
    return ModelConfig.from_dict(data)  # validated as it is built (its family's and scheme's checks: `resolve`)


def resolve(name_or_path: str, overrides: dict | None = None, random_init: bool = False) -> ResolvedModel:
    """A variant's registered config, or a checkpoint's from its config.json (and, for the ConvNeXt sizes
    config.json leaves out, the weight files' names and shapes: no tensor is read), with `overrides` applied
    (None values are left out: "not given").

    A variant with a hub id stands for that released checkpoint: it resolves to its copy in the local Hugging
    Face cache (an error when there is none, never a silent random model). `random_init`: the variant's config
    with seeded random weights instead (a pipeline check; what a variant without a hub id always is)."""
    from . import checkpoints

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = checkpoint_path(name_or_path, random_init)
    if path is None:
        cfg, source, directory, layout = get_variant(name_or_path), VARIANT, "", ""
    else:
        cfg, layout = checkpoints.config_from_checkpoint(path)
        source, directory = CHECKPOINT, str(path)
    cfg = validate_resolved(with_overrides(cfg, given))  # its host family's and routing scheme's checks
    return ResolvedModel(name_or_path, source, directory, layout, _as_json(cfg))


def checkpoint_path(name_or_path: str, random_init: bool = False) -> Path | None:
    """The checkpoint directory a model name stands for (None: a variant built from its config), found without
    reading a file: a directory, a cached hub id, or a variant's released checkpoint (its hub id, cached)."""
    from . import checkpoints

    released = ""
    if is_variant(name_or_path):
        released = "" if random_init else variant_entry(name_or_path).config.hub_id
        if not released:
            return None
    problem = model_name_error(name_or_path)
    if problem:
        raise ConfigError(problem)
    try:
        return checkpoints.checkpoint_directory(released or name_or_path)
    except checkpoints.CheckpointError as exc:
        if not released:
            raise
        raise ConfigError(
            f"variant {name_or_path!r} is the released checkpoint {released}, which is not in the local Hugging "
            f"Face cache ({exc}): download it (`huggingface-cli download {released}`) or pass its directory; for "
            "the variant's config with random weights, ask for a random init (model_args random_init=true, "
            "`modbench run --random-init`)") from None


def build(resolved: ResolvedModel, seed: int = 0, device: str = "cpu"):
    """The model a resolution stands for: a variant's seeded random init, or the checkpoint's weights."""
    from . import build_model, load

    if resolved.source == VARIANT:
        return build_model(resolved.config, seed=seed, device=device)
    return load(resolved.checkpoint, device_map=device, config=resolved.config)
