"""The loader and the writer against the authors' key layouts, as listed in tests/fixtures/authors_layouts/
(written by its generate.py from the authors' module definitions, not by our writer)."""

import json
from pathlib import Path

import pytest
import torch

from modbench import models
from modbench.models.checkpoints import CheckpointError, authors_config, to_authors_state

FIXTURES = Path(__file__).parent / "fixtures" / "authors_layouts"
LAYOUTS = sorted(path.stem for path in FIXTURES.glob("*.json"))


def read_fixture(layout: str) -> dict:
    return json.loads((FIXTURES / f"{layout}.json").read_text())


def authors_state(fixture: dict) -> dict[str, torch.Tensor]:
    """Random float16 tensors (as released) under exactly the fixture's names; shared names hold one tensor."""
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator).half() for name, shape in fixture["parameters"].items()}
    for names in fixture["shared"]:
        for name in names[1:]:
            state[name] = state[names[0]]
    return state


def write_checkpoint(directory: Path, fixture: dict, state: dict, tokenizer) -> Path:
    """A directory as the authors' release holds it: config.json, weights, tokenizer, and the CLIP config
    that mm_vision_tower names."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(fixture["config"]))
    (directory / "vision_tower").mkdir()
    (directory / "vision_tower" / "config.json").write_text(json.dumps(fixture["vision_tower_config"]))
    torch.save(state, directory / "pytorch_model.bin")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def loaded_layouts(tmp_path_factory, tokenizer):
    """layout -> (fixture, checkpoint state, loaded model); each layout loaded once for the tests below."""
    cache = {}

    def get(layout):
        if layout not in cache:
            fixture = read_fixture(layout)
            state = authors_state(fixture)
            directory = write_checkpoint(tmp_path_factory.mktemp(layout) / "ckpt", fixture, state, tokenizer)
            cache[layout] = fixture, state, models.load(str(directory), dtype="float32")
        return cache[layout]

    return get


def fingerprints(tensors) -> list[tuple]:
    return sorted((tuple(t.shape), float(t.double().sum()), float(t.double().abs().sum())) for t in tensors)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loader_reads_the_authors_layout(layout, loaded_layouts, prompts, images):
    fixture, state, model = loaded_layouts(layout)
    twin = models.get_variant(fixture["twin"])
    assert (model.cfg.family, model.cfg.mod.scheme) == (twin.family, twin.mod.scheme)
    # every checkpoint tensor reached the model unchanged, once (γ-MoD's router copies are one parameter)
    distinct = {id(t): t for t in state.values()}.values()
    assert fingerprints(model.state_dict().values()) == fingerprints(distinct)
    with torch.no_grad():
        logits = model(prompts, images).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_writer_writes_the_authors_layout(layout, loaded_layouts):
    fixture, state, model = loaded_layouts(layout)
    kind = fixture["config"]["model_type"]
    written = to_authors_state(model, kind)
    assert {k: list(v.shape) for k, v in written.items()} == fixture["parameters"]
    for key, value in written.items():
        torch.testing.assert_close(value, state[key].float(), rtol=0, atol=0, msg=key)
    conf, theirs = authors_config(model, kind, "vision_tower"), fixture["config"]
    for key in ("architectures", "model_type", "is_multipath_encoder", "input_image_size", "freeze_vision",
                "image_aspect_ratio", "mm_patch_merge_type", "mm_hidden_size", "mm_hidden_size_aux",
                "image_size_aux", "image_grid", "image_global", "image_grid_pinpoints", "mod_target_layers",
                "mod_target_token_type", "mod_router_factor", "mod_weight_norm", "mod_bias_enabled",
                "mod_special_init", "mod_target_layer_indices"):
        assert conf.get(key) == theirs.get(key), key
    if "mod" in theirs:
        assert conf["mod"]["mod_layers_idx"] == theirs["mod"]["mod_layers_idx"]


@pytest.mark.parametrize("layout, found, accepted", [
    ("llava_hr", "gamma", "weight"),  # timm's name in a LLaVA-HR checkpoint
    ("mgm", "weight", "gamma"),  # LLaVA-HR's name in a Mini-Gemini checkpoint
    ("mod_llava_llama_hr", "scale", "weight"),
])
def test_unknown_layer_scale_name_lists_both_forms(layout, found, accepted, tmp_path, tokenizer):
    fixture = read_fixture(layout)
    state = authors_state(fixture)
    for key in [k for k in state if k.endswith(f".blocks.0.{accepted}") and "stages." in k]:
        state[key.rsplit(".", 1)[0] + f".{found}"] = state.pop(key)
    directory = write_checkpoint(tmp_path / "ckpt", fixture, state, tokenizer)
    with pytest.raises(CheckpointError, match=rf"layer-scale .*'{found}'.*'{accepted}'"):
        models.load(str(directory))


def test_fixtures_are_what_the_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_authors_layouts", FIXTURES / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    written = generator.layouts()
    assert sorted(written) == LAYOUTS
    for layout, fixture in written.items():
        assert (FIXTURES / f"{layout}.json").read_text() == generator.dumps(fixture), layout
