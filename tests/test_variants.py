import pytest

import models
from models.params import count_parameters
from suite.cli import main as cli_main

FULL = [cfg.name for cfg in models.list_variants() if not cfg.tiny and not cfg.name.startswith("cpu-")]


@pytest.mark.parametrize("name", FULL)
def test_full_size_specs_instantiate_on_meta(name):
    cfg = models.get_variant(name)
    n = count_parameters(cfg)
    assert n > 6e9
    if cfg.mod.scheme == "gamma":  # the shared router adds 2 x hidden
        dense = models.get_variant(name.split("-gmod")[0])
        assert n - count_parameters(dense) == 2 * cfg.llm.hidden_size


def test_llava_15_7b_parameter_count():
    assert count_parameters(models.get_variant("llava-1.5-7b")) == pytest.approx(7.06e9, rel=0.01)


def test_models_cli_lists_every_variant(capsys):
    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    for cfg in models.list_variants():
        assert cfg.name in out
