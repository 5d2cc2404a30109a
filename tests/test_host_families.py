"""Adding a host family is one module plus a registration: a toy family, declared here and registered for one
test, is built, written and loaded back by the generic code; `family` is the one field that names it."""

import dataclasses
import json

import pytest
import torch

from modbench import models
from modbench.models.checkpoints import CheckpointError, save_authors_checkpoint
from modbench.models.config import ConfigError
from modbench.models.hosts import (
    HostFamily,
    KeyLayout,
    Release,
    host_families,
    registered,
    validate_for_family,
)
from modbench.models.llava import LlavaVision

# A copy of LLaVA-1.5 under another name, other key prefixes, its own model_types and one config.json field
# of its own: everything models/checkpoints.py needs to know about a host, declared outside it.
TOY_LAYOUT = KeyLayout("Toy", (
    ("language_model.model.embed_tokens.", "toy.embed."),
    ("language_model.model.layers.", "model.layers."),  # where the schemes put their routers
    ("language_model.model.norm.", "toy.norm."),
    ("language_model.lm_head.", "toy.head."),
    ("vision.projector.", "toy.bridge."),
    ("vision.vision_tower.", "toy.eye."),
))


def _read(vision, source):
    assert source.conf["toy_marker"] == 7  # the family's own config.json field reaches its reader


TOY = HostFamily(
    name="toy-llava", frontend=LlavaVision, layout=TOY_LAYOUT,
    releases={"dense": Release("toy_llava", "ToyLlavaForCausalLM"),
              "gamma": Release("mod_toy_llava", "ToyMoDLlavaForCausalLM")},
    read_vision=_read, write_vision=lambda cfg: {"toy_marker": 7},
)


def toy_config(variant: str):
    return dataclasses.replace(models.get_variant(variant), name=f"{variant}-toy", family="toy-llava")


@pytest.mark.parametrize("variant, model_type", [("tiny-llava", "toy_llava"), ("tiny-llava-gmod", "mod_toy_llava")])
def test_a_family_registered_from_a_test_module_saves_and_loads(variant, model_type, tmp_path, prompts, images):
    with registered(TOY):
        model = models.build_model(toy_config(variant))
        directory = save_authors_checkpoint(model, tmp_path / "ckpt", model_type)
        conf = json.loads((directory / "config.json").read_text())
        assert conf["model_type"] == model_type and conf["toy_marker"] == 7
        keys = torch.load(directory / "pytorch_model.bin", weights_only=True)
        assert any(k.startswith("toy.eye.") for k in keys) and not any(k.startswith("vision.") for k in keys)
        loaded = models.load(str(directory))
        assert (loaded.cfg.family, loaded.cfg.mod.scheme) == ("toy-llava", model.cfg.mod.scheme)
        with torch.no_grad():
            torch.testing.assert_close(loaded(prompts, images).logits, model(prompts, images).logits)
    assert "toy-llava" not in host_families()  # nothing outlives the registration
    with pytest.raises(CheckpointError, match=f"unknown model_type '{model_type}'"):
        models.load(str(tmp_path / "ckpt"))


def test_a_scheme_the_family_has_no_release_for_is_refused(tmp_path):
    with registered(TOY):
        model = models.build_model(toy_config("tiny-llava-pmod"))
        with pytest.raises(ValueError, match="no released layout for pmod on toy-llava"):
            save_authors_checkpoint(model, tmp_path / "ckpt", "pmod_llava_llama")


def test_family_is_the_one_name_of_the_host_and_older_records_vision_kind_is_checked():
    llava = models.get_variant("tiny-llava")
    assert "kind" not in llava.to_dict()["vision"]
    with pytest.raises(ConfigError, match="grid_pinpoints is required for family 'llava-next'"):
        validate_for_family(dataclasses.replace(llava, family="llava-next"))  # another family's checks
    with pytest.raises(ConfigError, match="unknown host family 'toy-llava'"):
        validate_for_family(toy_config("tiny-llava"))
    with pytest.raises(ConfigError, match="unknown key"):
        models.ModelConfig.from_dict({**llava.to_dict(), "vision": {**llava.to_dict()["vision"], "colour": "red"}})


@pytest.mark.parametrize("variant, kind", [("tiny-llava", "clip"), ("tiny-llava-hr", "multipath"),
                                           ("tiny-llava-next", "anyres"), ("tiny-mgm-hd", "mgm-hd")])
def test_an_older_records_vision_kind_is_read_when_it_names_the_familys_front_end(variant, kind):
    cfg = models.get_variant(variant)
    data = cfg.to_dict()
    assert models.ModelConfig.from_dict({**data, "vision": {**data["vision"], "kind": kind}}) == cfg
    other = "clip" if kind != "clip" else "anyres"
    with pytest.raises(ConfigError, match=f"vision.kind '{other}' does not match family '{cfg.family}'"):
        models.ModelConfig.from_dict({**data, "vision": {**data["vision"], "kind": other}})
    with registered(TOY):  # a family added since never wrote one
        with pytest.raises(ConfigError, match="'toy-llava' never wrote one"):
            models.ModelConfig.from_dict({**toy_config("tiny-llava").to_dict(),
                                          "vision": {**data["vision"], "kind": kind}})


@pytest.mark.parametrize("variant, family, field", [("tiny-llava-next", "llava", "grid_pinpoints"),
                                                    ("tiny-llava-hr", "llava", "convnext"),
                                                    ("tiny-mgm-hd", "llava", "convnext"),
                                                    ("tiny-mgm-hd", "llava-hr", "image_grid")])
def test_a_vision_field_the_familys_front_end_does_not_read_is_refused(variant, family, field):
    """With `family` the one name of the host, moving a config to another family must not silently drop the
    fields only the first family's front-end reads."""
    moved = dataclasses.replace(models.get_variant(variant), family=family)
    for step in (validate_for_family, models.build_model, lambda cfg: models.ModVlm(cfg, None)):
        with pytest.raises(ConfigError, match=f"vision.{field} is set, but family '{family}'"):
            step(moved)


def test_a_config_is_checked_against_its_family_where_it_is_resolved_and_built_not_where_it_is_made():
    """ModelConfig checks what needs no family; the family's checks (its module imports torch) run in `resolve`
    and in every model's construction, so the variant registry, and `modbench table` reading it, stay light."""
    from modbench.models.flops import flops_analytic
    from modbench.models.resolver import resolve

    moved = dataclasses.replace(models.get_variant("tiny-llava-hr"), family="llava")  # made: not checked yet
    with pytest.raises(ConfigError, match="vision.convnext is set, but family 'llava'"):
        models.build_model(moved)
    with pytest.raises(ConfigError, match="vision.convnext is set, but family 'llava'"):
        resolve("tiny-llava-hr", {"family": "llava"})
    with pytest.raises(ConfigError, match="vision.convnext is set, but family 'llava'"):
        moved.num_image_tokens  # the family's geometry is read only for a config its family accepts
    pmod_moved = dataclasses.replace(models.get_variant("pmod-llava-next-7b"), family="llava")
    with pytest.raises(ConfigError, match="vision.grid_pinpoints is set, but family 'llava'"):
        flops_analytic(pmod_moved, 4000)  # (it counted 55.7 TFLOPs instead of 38.5, silently)
    for cfg in models.list_variants():  # every registered variant passes its family's checks
        assert validate_for_family(cfg) == cfg


def test_a_family_with_a_vision_geometry_of_its_own_needs_no_edit_of_config_py(prompts, images):
    """A new front-end: its token count and checks come with its registration (HostFamily.image_tokens /
    check_vision); config.py knows no front-end's geometry. Here a CLIP front-end that keeps the CLS token."""

    class ClsKeepingVision(LlavaVision):
        def tower_output(self, pixels):
            out = self.vision_tower(pixels.to(self.projector[0].weight.dtype), output_hidden_states=True)
            return out.hidden_states[self.vision_cfg.select_layer]  # CLS kept: one token more

    def check(vision):
        if vision.select_layer != -2:
            raise ConfigError("vision.select_layer must be -2 for family 'toy-cls'")

    wide = dataclasses.replace(TOY, name="toy-cls", frontend=ClsKeepingVision,
                               image_tokens=lambda v: (v.image_size // v.patch_size) ** 2 + 1, check_vision=check,
                               releases={"dense": Release("toy_cls", "ToyClsForCausalLM")})
    base = models.get_variant("tiny-llava")
    with registered(wide):
        cfg = dataclasses.replace(base, name="tiny-toy-cls", family="toy-cls")
        assert cfg.num_image_tokens == base.num_image_tokens + 1
        model = models.build_model(cfg)
        batch = model.build_batch(prompts[:1], images[:1])
        assert batch.image_tokens[0] == cfg.num_image_tokens == model.vision.num_image_tokens
        with pytest.raises(ConfigError, match="select_layer must be -2 for family 'toy-cls'"):
            validate_for_family(dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, select_layer=-1)))
    with pytest.raises(ConfigError, match="unknown host family 'toy-cls'"):
        cfg.num_image_tokens


def test_config_json_two_families_claim_is_an_error(tmp_path):
    directory = save_authors_checkpoint(models.build_model("tiny-llava-next"), tmp_path / "ckpt", "llava")
    conf = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**conf, "is_multipath_encoder": True}))
    with pytest.raises(CheckpointError, match="fits the llava-next and the llava-hr layouts"):
        models.load(str(directory))


def test_a_second_fallback_for_a_model_type_is_refused_and_an_unclaimed_config_is_an_error(tmp_path):
    """Families sharing a model_type are told apart by their `claims`; one without is the fallback, and a second
    fallback would make a config.json's family arbitrary. A config.json no family takes is a CheckpointError."""
    from modbench.models.hosts import register_host_family

    twin = dataclasses.replace(TOY, name="toy-twin")
    with registered(TOY):
        with pytest.raises(ValueError, match="'toy-llava' is already the fallback for \\['mod_toy_llava', 'toy_llava'\\]"):
            register_host_family(twin)
        directory = save_authors_checkpoint(models.build_model(toy_config("tiny-llava")), tmp_path / "ckpt", "toy_llava")
    picky = dataclasses.replace(TOY, claims=lambda conf: conf.get("toy_marker") == 8)
    with registered(picky):
        with pytest.raises(CheckpointError, match="no host family claims this toy_llava config.json"):
            models.load(str(directory))


def test_the_generic_code_branches_on_no_family_and_no_scheme():
    """checkpoints.py, flops.py, routing_stats.py and config.py (its checks of a config) ask the registries; none
    compares a family, scheme or model_type name (the branches issue 16 moved into the front-end and scheme
    modules)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    families = host_families().values()
    names = ({f.name for f in families} | {"dense", "gamma", "pmod"}
             | {r.model_type for f in families for r in f.releases.values()})
    for path in ("models/checkpoints.py", "models/flops.py", "suite/routing_stats.py", "models/config.py"):
        for node in ast.walk(ast.parse((root / path).read_text())):
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    for const in ast.walk(operand):
                        assert not (isinstance(const, ast.Constant) and const.value in names), \
                            f"{path}:{node.lineno} compares with {const.value!r}"


def _imports(path) -> list[tuple[str, int]]:
    """Every absolute import of a module file, at any depth (function-level imports included), with its line."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]  \
            if isinstance(node, ast.ImportFrom) and node.level == 0 else []  # `from a import b` may import a.b
        out += [(name, node.lineno) for name in names]
    return out


def test_models_import_nothing_from_the_suite():
    """models/ is the model library (loaders, core, FLOPs, the lmms-eval plugin); the suite builds on it, never the
    other way round, so that the plugin and the loaders work without the suite's CLI, runner or tables."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "models").glob("*.py")):
        for name, line in _imports(path):
            assert not (name == "modbench.suite" or name.startswith("modbench.suite.")), f"{path.name}:{line}"


def test_the_profilers_and_the_runner_do_not_import_each_other():
    """The latency profiler and the lmms-eval runner share their helpers through modbench.tasks.registry
    (check_data) and modbench.suite.results (peak_memory_bytes), not through each other."""
    from pathlib import Path

    suite = Path(__file__).resolve().parent.parent / "suite"
    assert not [line for name, line in _imports(suite / "latency.py") if name == "modbench.suite.runner"]
    assert not [line for name, line in _imports(suite / "runner.py") if name in ("modbench.suite.latency", "modbench.suite.overhead")]


def test_one_installed_namespace(tmp_path):
    """The checkout's packages install as modbench.models / .suite / .tasks: outside the checkout the bare names
    (which any other research code base may use) are not importable, and no source file imports them."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import importlib.util as u; print([u.find_spec(n) is None for n in ('models', 'suite', 'tasks')],"
             " [u.find_spec('modbench.' + n) is not None for n in ('models', 'suite', 'tasks')])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[True,", "True,", "True]", "[True,", "True,", "True]"], out.stdout
    root = Path(__file__).resolve().parent.parent
    sources = [p for d in ("models", "suite", "tasks", "tests", "scripts", "modbench") for p in (root / d).rglob("*.py")]
    for path in sources + [root / "dev.py"]:
        for name, line in _imports(path):
            assert name.split(".")[0] not in ("models", "suite", "tasks"), f"{path.relative_to(root)}:{line} {name}"


def test_outside_the_checkout_the_suite_finds_its_own_files(tmp_path):
    """Run from another directory: the papers' tables come from the installed data package `modbench.paper`, the
    git state is the repository of the code that ran, and the matrix is the directory's own (none here: an error
    that says how to name one). No source file reaches data through `__file__`'s parents."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("from modbench.suite.project import paper_table\n"
             "from modbench.suite.results import git_state\n"
             "from modbench.suite.matrix import load_matrix_file\n"
             "print(paper_table('pmod_table1_general.csv').readline().split(',')[0])\n"
             "print(git_state()['sha'])\n"
             "try:\n    load_matrix_file()\nexcept FileNotFoundError as exc:\n    print('--matrix FILE' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    with open(root / "results" / "paper" / "pmod_table1_general.csv") as handle:
        header = handle.readline().split(",")[0]
    assert out.stdout.split() == [header, sha or "None", "True"], out.stdout
    for path in [p for d in ("models", "suite", "tasks") for p in (root / d).rglob("*.py")]:
        text = path.read_text()
        assert "__file__).resolve().parent.parent" not in text and "__file__).parents[" not in text, path
