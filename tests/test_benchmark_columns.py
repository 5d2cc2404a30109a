"""Which numbers the tables print for a benchmark is on its registration (tasks/benchmarks.py): the papers' columns,
the metric they print, its scale and display name. tables.py, reproduce.py and check.py read them there, and find a
group's member tasks in the task registry, not by name."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_every_registered_metric_is_one_its_task_reports():
    from modbench.tasks.benchmarks import list_benchmarks
    from modbench.tasks.registry import _Loader, local_tasks

    for benchmark in list_benchmarks():
        for choice, metric in benchmark.metrics.items():
            conf = yaml.load(local_tasks()[metric.task]["yaml"].read_text(), Loader=_Loader)
            names = {m["metric"] for m in conf.get("metric_list") or conf.get("aggregate_metric_list") or []}
            assert metric.name in names, (benchmark.name, choice, metric)


def test_the_tables_columns_are_the_registrations():
    from modbench.suite import tables
    from modbench.tasks.benchmarks import get_benchmark

    pope, textvqa = get_benchmark("pope"), get_benchmark("textvqa")
    assert tables.BENCHMARKS["pope"] == ("pope_local", "pope_f1_score", 100.0)  # the papers: F1
    assert tables.BENCHMARKS["mme"] == ("mme_local", "mme_perception_score", 1.0)  # the papers' raw score
    assert tables.BENCHMARKS["textvqa_acc"] == tables.BENCHMARKS["textvqa"] == ("textvqa_val_ocr_local", "exact_match",
                                                                               100.0)
    assert tables.SKIPS["textvqa_skip"] == "textvqa_val_ocr_local" and tables.DISPLAY["sqa_img"] == "SQA-IMG"
    assert (pope.paper_metric, textvqa.paper_metric) == ("f1", "ocr")
    assert set(tables.DISPLAY) == set(tables.BENCHMARKS) and all(tables.DISPLAY.values())


def test_the_reproduction_picks_its_own_choices_from_the_registrations():
    """POPE accuracy instead of F1, MME as % of its 800 maximum, TextVQA without OCR tokens; the rest as the papers."""
    from modbench.suite import reproduce, tables
    from modbench.tasks.benchmarks import metric

    assert list(reproduce.BENCHMARKS) == ["GQA", "SQA-IMG", "TextVQA", "POPE", "MME", "MMB"]
    assert reproduce.BENCHMARKS["POPE"] == ("pope_local", "pope_accuracy", 100.0)
    assert reproduce.BENCHMARKS["MME"] == ("mme_local", "mme_perception_score", 100.0 / 800)
    assert reproduce.BENCHMARKS["TextVQA"] == ("textvqa_val_local", "exact_match", 100.0)
    for column, paper in (("GQA", "gqa_acc"), ("SQA-IMG", "sqa_acc"), ("MMB", "mmb")):
        assert reproduce.BENCHMARKS[column] == tables.BENCHMARKS[paper] and tables.DISPLAY[paper] == column
    with pytest.raises(ValueError, match="benchmark 'pope' has no metric 'f2'; it has f1, accuracy"):
        metric("pope", "f2")


def test_a_registration_refuses_columns_it_cannot_map(monkeypatch):
    from modbench.tasks import benchmarks
    from modbench.tasks.benchmarks import PERCENT_SUM, Benchmark, Metric, register_benchmark

    monkeypatch.setattr(benchmarks, "_BENCHMARKS", dict(benchmarks._BENCHMARKS))
    base = dict(splits={}, columns=(), fixture=lambda root: [])
    with pytest.raises(ValueError, match="paper columns need paper_metric"):
        register_benchmark(Benchmark("new", **base, metrics={"a": Metric("gqa_local", "exact_match")},
                                     paper_columns=("new",), display="New"))
    with pytest.raises(ValueError, match=r"paper columns \['gqa'\] are another benchmark's"):
        register_benchmark(Benchmark("new", **base, metrics={"a": Metric("gqa_local", "exact_match")},
                                     paper_metric="a", paper_columns=("gqa",), display="New"))
    with pytest.raises(ValueError, match="'exact_match' is a percent sum, elsewhere a share"):
        register_benchmark(Benchmark("new", **base, metrics={"a": Metric("gqa_local", "exact_match", 1.0, PERCENT_SUM)}))


def test_check_reads_a_metrics_kind_from_the_registrations_and_a_groups_members_from_the_task_registry():
    import ast

    from modbench.suite.check import accuracy_tolerance, is_accuracy, task_samples

    assert accuracy_tolerance(400.0, "mme_cognition_score", 100, "fixed") == pytest.approx(2.0)  # a percent sum
    assert accuracy_tolerance(0.4, "seed_image", 100, "fixed") == 0.02
    assert [is_accuracy(n) for n in ("seed_image", "mmbench_acc", "gpt_eval_score", "pope_f1_score", "some_acc")] == [
        True, True, False, False, True]
    per_task = {"pope_local_random": {"n_samples": 3}, "pope_local_popular": {"n_samples": 4},
                "pope_local_elsewhere": {"n_samples": 100}, "gqa_local": {"n_samples": 7}}
    run = {"efficiency": {"per_task": per_task}}
    assert (task_samples(run, "pope_local"), task_samples(run, "gqa_local"), task_samples(run, "mme_local")) == (7, 7, 0)
    built_in = {"efficiency": {"per_task": {"pope_adversarial": {"n_samples": 5}, "pope_random": {"n_samples": 6}}}}
    assert task_samples(built_in, "pope") == 11  # a group not in our registry: its `<group>_` tasks
    source = (ROOT / "suite" / "check.py").read_text()
    assert not [node.lineno for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("mme")]


def test_the_plots_and_the_report_colour_by_scheme():
    from modbench.models.config import SCHEMES
    from modbench.suite.plots import PAPER_POINTS, PAPER_STYLE
    from modbench.suite.reproduce import ROWS
    from modbench.suite.tables import TABLES

    assert all(spec.scheme in SCHEMES and spec.scheme != "dense" for spec in TABLES)
    assert {spec.scheme for spec in TABLES if spec.name in PAPER_POINTS} <= set(PAPER_STYLE)
    assert {row.scheme for row in ROWS.values()} <= set(SCHEMES)


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_the_tflops_at_the_papers_skip_are_the_schemes_own_count(preset):
    """The report's "at the paper's 57.7 %" uses the trained row's scheme (tokens_per_layer), which gives what the
    MoD layers at that skip run: the prompt's tokens less the skipped share, the other layers all of them."""
    from modbench import models
    from modbench.models.flops import flops_for_tokens
    from modbench.suite.reproduce_report import Summary, _at_paper_skip

    summary = Summary(json.loads((ROOT / "results" / "reproduction" / preset / "summary.json").read_text())["result"])
    cfg = models.get_variant(summary.result["preset"]["model"])
    seed = summary.seeds[0]
    tokens = seed["evals"]["dense|released"]["prompt_tokens"]
    for row in summary.rows():
        mod_layers = set(seed["rows"][row]["mod_layers"])
        dense = flops_for_tokens(cfg, [tokens] * cfg.llm.num_layers)["tflops"]
        routed = flops_for_tokens(cfg, [tokens * (1 - 0.577) if i in mod_layers else tokens
                                        for i in range(cfg.llm.num_layers)])["tflops"]
        assert _at_paper_skip(summary, row) == 100 * (routed / dense - 1), row
