"""A routing scheme's checks of its ModSpec fields live with the scheme (RoutingScheme.spec_fields / check_spec) and
run where a config is resolved or built, with its host family's (config.validate_resolved); making a ModelConfig
checks what needs neither, so the variant registry stays light. A toy scheme, declared here and registered for one
test, gets its own checks called by the generic code."""

import dataclasses
import json

import pytest
import torch

from modbench import models
from modbench.models.checkpoints import CheckpointError, save_authors_checkpoint
from modbench.models.config import SCHEMES, ConfigError, ModSpec, scheme_names, validate_resolved
from modbench.models.resolver import resolve, with_overrides
from modbench.models.routing import (
    Route,
    RoutingScheme,
    registered_scheme,
    scheme_class,
    scheme_classes,
    validate_for_scheme,
)
from modbench.models.variants import with_mod

# (variant, overrides, the error): each check moved out of config.validate into a scheme class
MOVED = [
    # the dense base
    ("tiny-llava", {"mod.layers": [1, 2]}, r"mod.layers must be empty when mod.scheme is 'dense'"),
    # γ-MoD
    ("tiny-llava-gmod", {"mod.fixed_skip": 1.0}, r"mod.fixed_skip = 1.0 is outside \[0, 1\)"),
    ("tiny-llava-gmod", {"mod.masked_tokens": "all"}, r"mod.masked_tokens must be one of \('none', 'q', 'qa'\)"),
    ("tiny-llava-gmod", {"mod.train_skip_fraction": 1.0}, r"mod.train_skip_fraction = 1.0 is outside \[0, 1\)"),
    ("tiny-llava-gmod", {"mod.prefill_threshold": -0.1}, r"mod.prefill_threshold = -0.1 is outside \[0, 1\)"),
    ("tiny-llava-gmod", {"mod.decode_threshold": 1.5}, r"mod.decode_threshold = 1.5 is outside \[0, 1\)"),
    # p-MoD
    ("tiny-llava-pmod", {"mod.layers": [2, 3], "mod.ratios": [0.5]}, "mod.ratios has 1 entries but mod.layers has 2"),
    ("tiny-llava-pmod", {"mod.prd_min_ratio": 0.9}, "mod.prd_min_ratio / mod.prd_max_ratio must satisfy"),
    ("tiny-llava-pmod", {"mod.pmod_pattern": "cosine"}, "mod.pmod_pattern must be one of"),
    ("tiny-llava-pmod", {"mod.pmod_weight_norm": "relu"}, "mod.pmod_weight_norm must be one of"),
    ("tiny-llava-pmod", {"mod.pmod_target_tokens": "all"}, "mod.pmod_target_tokens must be one of"),
    ("tiny-llava-pmod", {"mod.pmod_ranking": "raw"}, "mod.pmod_ranking must be one of"),
    ("tiny-llava-pmod", {"mod.pmod_decay_divisor": 0}, "mod.pmod_decay_divisor must be None or an integer >= 1"),
    ("tiny-llava-pmod", {"mod.pmod_router_factor": 0.0}, r"mod.pmod_router_factor = 0.0 is outside \(0, 1\]"),
    ("tiny-llava-pmod", {"mod.pmod_norm_scale": 0.0}, "mod.pmod_norm_scale = 0.0 must be positive and finite"),
    ("tiny-llava-pmod", {"mod.pmod_norm_bias": float("inf")}, "mod.pmod_norm_bias = inf must be finite"),
    ("tiny-llava-pmod", {"mod.pmod_router_bias": "yes"}, "mod.pmod_router_bias must be true or false"),
]

# (variant, overrides, the error): a field another scheme reads, set away from its default
FOREIGN = [
    ("tiny-llava-pmod", {"mod.fixed_skip": 0.5}, r"mod.fixed_skip applies to γ-MoD models \(scheme 'gamma'\), "
                                                 r"not 'pmod', whose routing does not read it"),
    ("tiny-llava", {"mod.fixed_skip": 0.3}, r"mod.fixed_skip applies to γ-MoD models .*not 'dense'"),
    ("tiny-llava-gmod", {"mod.pmod_pattern": "interleave"}, r"mod.pmod_pattern applies to p-MoD models "
                                                            r"\(scheme 'pmod'\), not 'gamma'"),
    ("tiny-llava-gmod", {"mod.ratios": [0.5] * 4}, r"mod.ratios applies to p-MoD models \(scheme 'pmod'\), not 'gamma'"),
    ("tiny-llava-gmod", {"mod.prd_max_ratio": 0.9}, r"mod.prd_max_ratio applies to p-MoD models"),
    ("tiny-llava-pmod", {"mod.prefill_threshold": 0.5}, r"mod.prefill_threshold applies to γ-MoD models .*not 'pmod'"),
    ("tiny-llava-pmod", {"mod.masked_tokens": "q"}, r"mod.masked_tokens applies to γ-MoD models .*not 'pmod'"),
    ("tiny-llava", {"mod.shared_router": False}, r"mod.shared_router applies to γ-MoD models .*not 'dense'"),
    ("tiny-llava", {"mod.pmod_router_bias": False}, r"mod.pmod_router_bias applies to p-MoD models .*not 'dense'"),
]


@pytest.mark.parametrize("variant, overrides, message", MOVED + FOREIGN)
def test_a_schemes_check_runs_where_a_config_is_resolved_or_built_not_where_it_is_made(variant, overrides, message):
    cfg = with_overrides(models.get_variant(variant), overrides)  # made: only what needs no scheme is checked
    steps = (validate_resolved, validate_for_scheme, models.build_model, lambda c: models.ModVlm(c, None),
             lambda c: c.num_image_tokens, lambda c: resolve(variant, overrides))
    for step in steps:
        with pytest.raises(ConfigError, match=message):
            step(cfg)


def test_converting_a_dense_model_checks_the_schemes_fields():
    dense = models.build_model("tiny-llava")
    with pytest.raises(ConfigError, match=r"mod.fixed_skip applies to γ-MoD models .*not 'pmod'"):
        from modbench.models.convert import convert_to_mod

        convert_to_mod(dense, ModSpec(scheme="pmod", layers=[2, 3], fixed_skip=0.5))
    with pytest.raises(ConfigError, match=r"mod.ratios has 3 entries but mod.layers has 2"):
        convert_to_mod(dense, ModSpec(scheme="pmod", layers=[2, 3], ratios=[0.5] * 3))
    with pytest.raises(ConfigError, match=r"mod.prefill_threshold = 1.0 is outside \[0, 1\)"):
        convert_to_mod(dense, ModSpec(scheme="gamma", layers=[2, 3], prefill_threshold=1.0))


@pytest.mark.parametrize("variant, model_type, update, message", [
    ("tiny-llava-pmod", "pmod_llava_llama", lambda conf: {"mod_router_factor": 2.0},
     r"mod.pmod_router_factor = 2.0 is outside \(0, 1\]"),
    ("tiny-llava-pmod", "pmod_llava_llama", lambda conf: {"mod_weight_norm": "tanh_0_1"},
     r"mod.pmod_norm_scale = 0.0 must be positive"),
    ("tiny-llava-gmod", "mod_llava_llama", lambda conf: {"mod": {**conf["mod"], "prefill_threshold": 1.5}},
     r"mod.prefill_threshold = 1.5 is outside \[0, 1\)"),
    ("tiny-llava-gmod", "mod_llava_llama", lambda conf: {"mod": {**conf["mod"], "masked_tokens": "all"}},
     r"mod.masked_tokens must be one of"),
])
def test_a_checkpoints_scheme_fields_are_checked_naming_its_config_json(variant, model_type, update, message,
                                                                       tmp_path):
    directory = save_authors_checkpoint(models.build_model(variant), tmp_path / "ckpt", model_type)
    conf = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**conf, **update(conf)}))
    for step in (lambda: models.load(str(directory)), lambda: resolve(str(directory))):
        with pytest.raises(CheckpointError, match=f"config.json: {message}"):
            step()


def test_every_registered_variant_passes_its_familys_and_its_schemes_checks():
    for cfg in models.list_variants():
        assert validate_resolved(cfg) == cfg


def test_each_modspec_field_but_the_scheme_is_read_by_a_builtin_scheme():
    """config.SCHEME_FIELDS are ModSpec's; each built-in scheme names only those (a typo would refuse nothing), and
    every one is read by some scheme (a field none reads could never be set)."""
    from modbench.models.config import SCHEME_FIELDS

    classes = scheme_classes()
    assert set(SCHEMES) <= set(classes)
    read = set()
    for name in SCHEMES:
        assert classes[name].spec_fields <= set(SCHEME_FIELDS), name
        read |= classes[name].spec_fields
    assert read == set(SCHEME_FIELDS)
    assert {f for f in SCHEME_FIELDS if sum(f in classes[n].spec_fields for n in SCHEMES) > 1} == {"layers"}


# --- a toy scheme, registered from this module ----------------------------------------------------------------
class EvenLayersRouting(RoutingScheme):
    """MoD at even layers only, where every real token but the first runs (a fixed, data-free rule)."""

    title = "even-MoD"
    spec_fields = frozenset({"layers", "router_loss_coef"})  # router_loss_coef: read by γ-MoD too
    checked: list = []

    @staticmethod
    def check_spec(mod, num_layers):
        EvenLayersRouting.checked.append(list(mod.layers))
        odd = [layer for layer in mod.layers if layer % 2]
        if odd:
            raise ConfigError(f"mod.layers {odd} are odd: scheme 'toy-even' routes even layers only")

    def route(self, layer_idx, hidden, normed, ctx):
        if layer_idx not in self.mod_layers:
            return None
        keep = ctx.real.clone()
        keep[:, 0] = False
        return Route(keep=keep & ctx.real)


def test_a_scheme_registered_from_a_test_module_gets_its_own_checks_called(prompts, images):
    base = models.get_variant("tiny-llava")
    EvenLayersRouting.checked.clear()
    with registered_scheme("toy-even", EvenLayersRouting):
        assert scheme_names() == (*SCHEMES, "toy-even") and scheme_class("toy-even") is EvenLayersRouting
        cfg = with_mod(base, "tiny-toy-even", ModSpec(scheme="toy-even", layers=[2, 4], router_loss_coef=0.1))
        model = models.build_model(cfg)
        assert [2, 4] in EvenLayersRouting.checked
        assert isinstance(model.language_model.model.routing, EvenLayersRouting)
        out = model(prompts[:2], images[:2], collect_stats=True)
        assert torch.isfinite(out.logits).all()
        odd = with_mod(base, "tiny-toy-odd", ModSpec(scheme="toy-even", layers=[2, 3]))  # made: not checked yet
        for step in (validate_resolved, models.build_model, lambda c: resolve("tiny-llava", {
                "mod.scheme": "toy-even", "mod.layers": [2, 3]})):
            with pytest.raises(ConfigError, match=r"mod.layers \[3\] are odd: scheme 'toy-even'"):
                step(odd)
        # a field it does not read (γ-MoD's) is refused; one it shares with γ-MoD is named with both
        with pytest.raises(ConfigError, match=r"mod.fixed_skip applies to γ-MoD models \(scheme 'gamma'\), "
                                              r"not 'toy-even'"):
            models.build_model(dataclasses.replace(cfg, mod=dataclasses.replace(cfg.mod, fixed_skip=0.5)))
        with pytest.raises(ConfigError, match=r"mod.router_loss_coef applies to γ-MoD and even-MoD models "
                                              r"\(schemes 'gamma', 'toy-even'\), not 'pmod'"):
            resolve("tiny-llava-pmod", {"mod.router_loss_coef": 0.1})
        with pytest.raises(ValueError, match="'toy-even' is already registered"):
            with registered_scheme("toy-even", EvenLayersRouting):
                pass
    # nothing outlives the registration
    assert "toy-even" not in scheme_classes() and scheme_names() == SCHEMES
    with pytest.raises(ConfigError, match="mod.scheme must be one of"):
        with_mod(base, "tiny-toy-even", ModSpec(scheme="toy-even", layers=[2, 4]))
    with pytest.raises(ValueError, match="'gamma' is built in"):
        from modbench.models.routing import unregister_scheme

        unregister_scheme("gamma")
