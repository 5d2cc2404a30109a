"""One resolver: a variant name or checkpoint path -> a frozen config, from config.json, reading no tensor."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from modbench import models
from modbench.models.checkpoints import release_layout, save_authors_checkpoint
from modbench.models.config import ConfigError
from modbench.models.resolver import CHECKPOINT, VARIANT, ResolvedModel, build, resolve


def _without_name(cfg):
    return dataclasses.replace(cfg, name="", hub_id="", tiny=False, tokenizer="")


def _nan_tensor_data(path):
    """Overwrite every tensor byte of a safetensors file with 0xFF (NaN in float32), the header kept: whatever
    reads a tensor now sees NaN, whatever reads only names and shapes does not notice."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start:] = b"\xff" * (len(raw) - start)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("variant, kind", [("tiny-llava-hr-gmod", "mod_llava_llama"), ("tiny-mgm-hd", "mgm"),
                                           ("tiny-llava-pmod", "pmod_llava_llama")])
def test_resolving_a_checkpoint_reads_no_tensor(variant, kind, tmp_path):
    model = models.build_model(variant)
    save_authors_checkpoint(model, tmp_path / "ckpt", kind, fmt="safetensors")
    loaded = models.load(str(tmp_path / "ckpt")).cfg
    _nan_tensor_data(tmp_path / "ckpt" / "model.safetensors")
    resolved = resolve(str(tmp_path / "ckpt"))
    assert (resolved.source, resolved.layout) == (CHECKPOINT, kind)
    assert resolved.config == loaded  # the ConvNeXt sized from the weights' shapes alone
    assert resolved.config.mod.layers == model.cfg.mod.layers or model.cfg.mod.scheme == "pmod"
    with pytest.raises(ValueError, match="non-finite"):  # loading does read them: the overwrite was real
        models.load(str(tmp_path / "ckpt"))


def test_a_llava_checkpoint_resolves_from_config_json_alone(tmp_path, monkeypatch):
    from modbench.models import checkpoints

    model = models.build_model("tiny-llava-gmod")
    save_authors_checkpoint(model, tmp_path / "ckpt", "mod_llava_llama")

    def no_weights(*args, **kwargs):
        raise AssertionError("resolve read weights")

    for name in ("read_state_dict", "_load_file", "weight_shapes"):
        monkeypatch.setattr(checkpoints, name, no_weights)
    assert _without_name(resolve(str(tmp_path / "ckpt")).config) == _without_name(model.cfg)


def test_overrides_apply_to_variants_and_checkpoints_alike(tmp_path):
    save_authors_checkpoint(models.build_model("tiny-llava-gmod"), tmp_path / "ckpt", "mod_llava_llama")
    for name in ("tiny-llava-gmod", str(tmp_path / "ckpt")):
        resolved = resolve(name, {"attn_implementation": "eager", "dtype": "bfloat16", "mod.fixed_skip": 0.25,
                                  "seed": None})  # None: not given
        cfg = resolved.config
        assert (cfg.attn_implementation, cfg.dtype, cfg.mod.fixed_skip) == ("eager", "bfloat16", 0.25)
        model = build(resolved)  # the checkpoint too: `modbench latency --attn-implementation` used to drop it
        assert model.cfg.attn_implementation == "eager"
        assert model.language_model.model.hf_config._attn_implementation == "eager"
        assert next(model.parameters()).dtype == models.torch_dtype("bfloat16")
    with pytest.raises(ConfigError, match=r"override 'mod.skip': no field 'mod.skip'"):
        resolve("tiny-llava", {"mod.skip": 0.5})
    with pytest.raises(ConfigError, match="attn_implementation must be one of"):
        resolve("tiny-llava", {"attn_implementation": "fast"})
    with pytest.raises(ConfigError, match="did you mean tiny-llava"):
        resolve("tiny-lava")


def test_the_resolved_config_is_frozen_and_round_trips_through_its_record():
    resolved = resolve("tiny-llava-hr-gmod")
    assert resolved.source == VARIANT
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.config_json = "{}"
    cfg = resolved.config
    cfg.mod.layers.append(5)  # a caller's copy
    assert resolved.config.mod.layers == models.get_variant("tiny-llava-hr-gmod").mod.layers
    assert ResolvedModel.from_record(json.loads(json.dumps(resolved.to_record()))) == resolved
    for variant in models.list_variants():  # (a released variant's config as registered: random_init)
        assert resolve(variant.name, random_init=True).config == variant


def test_a_run_resolves_the_model_once_and_records_it(tmp_path, monkeypatch):
    """The plugin resolves; run.json's `resolved` block and the efficiency come from its record."""
    from modbench.models import resolver
    from modbench.suite.runner import RunSpec, run
    from modbench.tasks.fixtures import write_all

    write_all(tmp_path / "data", ["gqa"])
    calls = []
    original = resolver.resolve

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(resolver, "resolve", counted)
    outcome = run(RunSpec(model="tiny-llava-gmod", tasks=["gqa_local"], limit=1, protocol="llava",
                          attn_implementation="eager", output=str(tmp_path / "runs"),
                          data_root=str(tmp_path / "data")), progress=False)
    assert outcome.status == "ok", outcome.errors
    assert calls == ["tiny-llava-gmod"]
    record = json.loads((outcome.run_dir / "records.model.json").read_text())
    resolved = json.loads((outcome.run_dir / "run.json").read_text())["resolved"]
    assert resolved["model"] == record and resolved["attn_implementation"] == "eager"
    assert resolved["mod_scheme"] == "gamma" and resolved["mod_layers"] == [1, 2, 3, 4]


def test_a_variant_with_a_hub_id_is_its_released_checkpoint_never_a_silent_random_model(tmp_path, monkeypatch):
    """A released variant resolves to its copy in the local HF cache; without one it is an error naming the hub
    id (bench-full's cells name variants); `random_init` asks for its config with random weights on purpose."""
    import huggingface_hub.constants

    from modbench.models import variants

    released = dataclasses.replace(models.get_variant("tiny-llava"), name="tiny-llava-released",
                                   hub_id="test-org/tiny-llava")
    monkeypatch.setitem(variants._VARIANTS, released.name, variants.VariantEntry(released))
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(ConfigError, match=r"'tiny-llava-released' is the released checkpoint test-org/tiny-llava, "
                                          r"which is not in the local Hugging Face cache"):
        resolve("tiny-llava-released")
    assert resolve("tiny-llava-released", random_init=True).source == VARIANT
    assert resolve("tiny-llava").source == VARIANT  # no hub id: always its config, seeded

    model = models.build_model("tiny-llava", seed=3)
    snapshot = cache / "models--test-org--tiny-llava" / "snapshots" / ("0" * 40)
    save_authors_checkpoint(model, snapshot, release_layout(model.cfg))
    (cache / "models--test-org--tiny-llava" / "refs").mkdir()
    (cache / "models--test-org--tiny-llava" / "refs" / "main").write_text("0" * 40)
    resolved = resolve("tiny-llava-released")
    assert (resolved.source, Path(resolved.checkpoint)) == (CHECKPOINT, snapshot)
    loaded = build(resolved)
    torch.testing.assert_close(loaded.state_dict()["language_model.lm_head.weight"],
                               model.state_dict()["language_model.lm_head.weight"])
