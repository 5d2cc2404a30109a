"""Registries are the only lists: matrix slices, table rows and per-benchmark settings name registered things."""

import pytest

from modbench.models.config import ConfigError


def _slice(tmp_path, variants: str, tasks: str):
    path = tmp_path / "matrix.yaml"
    path.write_text(f"slices:\n  s:\n    variants: [{variants}]\n    tasks: [{tasks}]\n")
    return path


def test_a_matrix_slice_with_an_unknown_variant_or_task_fails_to_load(tmp_path):
    from modbench.suite.matrix import load_matrix

    assert load_matrix(_slice(tmp_path, "tiny-llava, tiny-llava-gmod", "gqa_local, pope_local"))["s"].variants
    with pytest.raises(ConfigError, match=r"slices\.s: model 'tiny-lava-gmod' is neither a registered variant nor a "
                                          r"checkpoint directory; did you mean tiny-llava-gmod"):
        load_matrix(_slice(tmp_path, "tiny-llava, tiny-lava-gmod", "gqa_local"))
    with pytest.raises(ConfigError, match=r"task 'pope_lcal' is not a local task; did you mean pope_local"):
        load_matrix(_slice(tmp_path, "tiny-llava", "pope_lcal"))
    with pytest.raises(ConfigError, match=r"task 'gqa' is not a local task; did you mean gqa_local"):
        load_matrix(_slice(tmp_path, "tiny-llava", "gqa"))
    path = _slice(tmp_path, "tiny-llava", "gqa_local")
    path.write_text(path.read_text() + "    protocol: [llava, lava]\n    dtype: [fp16]\n")
    with pytest.raises(ConfigError, match=r"dtype 'fp16' is not one of .*protocol 'lava' is not one of"):
        load_matrix(path)


def test_cli_choices_are_the_registries_lists():
    """The flags offer what the config accepts: the lists live in modbench.models.config, not in cli.py."""
    from modbench.models import config
    from modbench.suite.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    flags = {(name, option): tuple(c for c in action.choices if c)
             for name, parser in commands.items() for action in parser._actions if action.choices
             for option in action.option_strings}
    assert flags[("run", "--protocol")] == flags[("overhead", "--protocol")] == config.PROTOCOLS
    assert flags[("run", "--dtype")] == flags[("latency", "--dtype")] == config.DTYPES
    assert flags[("latency", "--attn-implementation")] == config.ATTN_IMPLEMENTATIONS
    assert flags[("train", "--scheme")] == config.SCHEMES and flags[("train", "--masked")] == config.MASKED_TOKENS
    assert flags[("train", "--mod-pattern")] == config.GAMMA_PATTERNS
    from modbench.suite import train  # its own lists, which --help cannot import (torch): kept equal here

    assert flags[("train", "--router")] == train.ROUTERS
    assert flags[("train", "--stage")] == train.STAGES and flags[("train", "--mixed-precision")] == train.MIXED_PRECISION


def test_the_scheme_list_is_the_routing_registry():
    """config.SCHEMES (what a config may name, importable without torch) is exactly the schemes registered; one
    registered from elsewhere is added to config.scheme_names() only while it is (tests/test_scheme_checks.py)."""
    from modbench.models import routing
    from modbench.models.config import SCHEMES, scheme_names

    routing.scheme_class("dense")  # imports the scheme modules, which register themselves
    assert set(routing._SCHEMES) == set(routing.scheme_classes()) == set(SCHEMES)
    assert scheme_names() == SCHEMES


def test_every_local_task_reads_a_registered_benchmark_and_every_benchmark_is_read():
    from modbench.tasks.benchmarks import benchmark_of_task, list_benchmarks
    from modbench.tasks.registry import local_tasks

    read = {benchmark_of_task(task).name for task in local_tasks()}  # raises for an unregistered data folder
    assert read == {b.name for b in list_benchmarks()}


@pytest.mark.parametrize("task, tokens", [
    ("scienceqa_img_local", 1), ("mmmu_val_local", 1), ("mmvet_local", 64), ("mmbench_en_dev_local", 1024),
    ("gqa_local", 6), ("pope_local_random", 6), ("textvqa_val_ocr_local", 6),
    ("mmbench_en_dev", 1024), ("scienceqa_img", 1),  # lmms-eval's built-in tasks of the same benchmarks
])
def test_the_llava_protocol_answer_length_is_the_benchmarks(task, tokens):
    from modbench.tasks.benchmarks import benchmark_of_task

    assert benchmark_of_task(task).llava_max_new_tokens == tokens


def test_a_task_of_no_benchmark_gets_the_short_answer_length():
    from modbench.models.lmms_plugin import ModbenchLmms
    from modbench.tasks.benchmarks import SHORT_ANSWER_TOKENS, benchmark_of_task

    assert benchmark_of_task("realworldqa") is None
    plugin = ModbenchLmms.__new__(ModbenchLmms)  # only the protocol and the cap matter here
    plugin.protocol, plugin.max_new_tokens_cap = "llava", None
    assert plugin._max_new_tokens("realworldqa", {"max_new_tokens": 99}) == SHORT_ANSWER_TOKENS
    assert plugin._max_new_tokens("mmvet_local", {"max_new_tokens": 99}) == 64
    plugin.protocol = "lmms-eval"
    assert plugin._max_new_tokens("mmvet_local", {"max_new_tokens": 99}) == 99


def test_an_unknown_benchmark_is_named_with_the_closest():
    from modbench.tasks.benchmarks import get_benchmark
    from modbench.tasks.fixtures import write_all

    with pytest.raises(ValueError, match=r"unknown benchmark 'scienceqa'; did you mean scienceqa_img"):
        get_benchmark("scienceqa")
    with pytest.raises(ValueError, match=r"unknown benchmark 'popee'"):
        write_all("/nonexistent", ["popee"])


def test_the_tables_rows_come_from_the_variants_and_reproduction_rows_registrations():
    """Paper rows and tiny twins are on the variant entries (and the reproduction rows): each names a row the
    paper's CSV has, and each twin is a registered tiny variant of the same host family and scheme."""
    import pandas as pd

    from modbench import models
    from modbench.models.variants import variant_entries
    from modbench.suite.project import paper_table
    from modbench.suite.reproduce import ROWS
    from modbench.suite.tables import TABLES, Sources

    specs = {spec.name: spec for spec in TABLES}
    claims = [(entry.name, row) for entry in variant_entries() for row in entry.paper]
    claims += [(name, row) for name, trained in ROWS.items() for row in trained.paper]
    for name, row in claims:
        assert row.table in specs, (name, row)
        spec = specs[row.table]
        with paper_table(spec.csv) as handle:
            frame = pd.read_csv(handle, dtype={k: str for k in spec.keys})
        assert tuple(row.key) in set(frame[spec.keys].itertuples(index=False, name=None)), (name, row)
    for entry in variant_entries():
        if entry.twin:
            twin = models.get_variant(entry.twin)
            assert twin.tiny and (twin.family, twin.mod.scheme) == (entry.config.family, entry.config.mod.scheme), \
                entry.name
    assert specs["gamma_mod_table3"].rows[("LLaVA-HR", "dense", "7B")] == Sources("llava-hr-7b", "", "tiny-llava-hr")
    assert specs["gamma_mod_table1"].rows[("masked_token", "Q+A")] == Sources(trained="gamma-0.34")


def test_a_paper_row_claimed_by_two_variants_is_an_error(monkeypatch):
    from modbench.models import variants
    from modbench.models.variants import PaperRow, VariantEntry
    from modbench.suite.tables import paper_sources

    entries = dict(variants._VARIANTS)
    copy = variants.get_variant("llava-hr-7b")
    copy.name = "llava-hr-7b-again"
    entries[copy.name] = VariantEntry(copy, (PaperRow("gamma_mod_table3", ("LLaVA-HR", "dense", "7B")),))
    monkeypatch.setattr(variants, "_VARIANTS", entries)
    with pytest.raises(ValueError, match="both 'llava-hr-7b' and 'llava-hr-7b-again' claim it"):
        paper_sources()


def test_the_plots_name_registered_tables():
    from modbench.suite.plots import PAPER_POINTS
    from modbench.suite.tables import TABLES

    assert set(PAPER_POINTS) <= {spec.name for spec in TABLES}


def test_prepare_names_no_benchmark_and_refuses_images_it_cannot_join(tmp_path):
    """What is special about a benchmark's copy (POPE's one split with a category column, GQA's separate image
    copy) is on its registration; prepare.py compares with no benchmark name."""
    import ast
    from pathlib import Path

    from modbench.tasks.benchmarks import list_benchmarks
    from modbench.tasks.prepare import prepare

    names = {b.name for b in list_benchmarks()}
    source = Path(__file__).resolve().parent.parent / "tasks" / "prepare.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Compare):
            for const in ast.walk(node):
                assert not (isinstance(const, ast.Constant) and const.value in names), f"prepare.py:{node.lineno}"
    with pytest.raises(ValueError, match=r"--images: mme has its images in its own copy; .* only for gqa"):
        prepare("mme", tmp_path / "copy", tmp_path / "root", images=tmp_path / "images")


def test_the_tables_and_the_reproduction_read_local_tasks():
    """The paper-column maps of tables.py and reproduce.py are read off the benchmark registrations, whose metrics
    name tasks the registry has (a renamed task fails here, not as a column reading "not run")."""
    from modbench.suite import reproduce, tables
    from modbench.tasks.benchmarks import list_benchmarks
    from modbench.tasks.registry import local_tasks

    registered = {(m.task, m.name) for b in list_benchmarks() for m in b.metrics.values()}
    assert {task for task, _ in registered} <= set(local_tasks()), sorted(registered)
    named = {(task, name) for task, name, _ in [*tables.BENCHMARKS.values(), *reproduce.BENCHMARKS.values()]}
    assert named <= registered, sorted(named - registered)
    assert set(tables.SKIPS.values()) <= {task for task, _ in registered}
    assert set(reproduce.TASKS) == {task for task, _, _ in reproduce.BENCHMARKS.values()}


def test_a_samples_score_comes_from_its_benchmarks_registration():
    """The reproduction's per-question tallies read one sample's score the way its benchmark's metric counts it;
    which field holds it is on the benchmark's registration, found from the task's data folder."""
    from modbench.tasks.benchmarks import get_benchmark, sample_score

    assert sample_score({"task": "pope_local_random", "pope_accuracy": {"score": 1.0}, "exact_match": 0.0}) == 1.0
    assert sample_score({"task": "mme_local", "mme_perception_score": {"score": 0}}) == 0.0
    rotation = {"task": "mmbench_en_dev_local", "mmbench_acc": {"pred": "B", "answer": "B"}}
    assert sample_score(rotation) == 1.0
    assert sample_score({**rotation, "mmbench_acc": {"pred": "A", "answer": "B"}}) == 0.0
    assert sample_score({"task": "gqa_local", "exact_match": 1.0}) == 1.0
    assert sample_score({"task": "mmvet_local"}) is None  # judged by a GPT: no per-sample score here
    assert get_benchmark("gqa").sample_score is None and get_benchmark("pope").sample_score is not None
