"""The papers' tables and plots, rendered from a fixed set of runs: released checkpoints, models trained here
and random stand-ins side by side, so the tests see every source kind and every mix of them."""

import json
import re

import pytest

from modbench.suite.tables import (
    HEADLINE_WIDTH,
    RELEASED,
    STAND_IN,
    TABLES,
    TRAINED,
    UNMAPPED,
    build_table,
    detail,
    headline,
    load_runs,
    metric_value,
    render_markdown,
    write_tables,
)

KINDS = (RELEASED, TRAINED, STAND_IN)
TASKS = {"gqa": "gqa_local", "sqa": "scienceqa_img_local", "mmmu": "mmmu_val_local",
         "textvqa": "textvqa_val_ocr_local"}
METRIC = {"mmmu_val_local": "mmmu_acc"}
TABLE = {spec.name: spec for spec in TABLES}


def make_run(model: str, acc: dict, tflops: float, skip: float = 0.0, n: int = 1000) -> dict:
    """A run.json in the results schema: accuracies (fractions) on the four benchmarks of the papers' average."""
    per_task = {task: {"n_samples": n, "avg_prompt_tokens": 100.0, "overall_skip": skip, "tflops_analytic": tflops}
                for task in TASKS.values()}
    layers = [{"layer": i, "mod": 0 < i < 3, **{f"skip_{t}": (skip if 0 < i < 3 else 0.0)
                                                 for t in ("system", "image", "question", "response")}}
              for i in range(4)]
    return {
        "schema_version": "1.0", "kind": "run", "status": "ok", "errors": [],
        "spec": {"model": model, "tasks": list(TASKS.values())},
        "environment": {k: None for k in ("git", "python", "torch", "cuda", "device_name", "transformers",
                                          "lmms_eval", "timestamp")},
        "resolved": {"mod_scheme": "dense" if skip == 0 else "gamma"},
        "metrics": {TASKS[k]: {METRIC.get(TASKS[k], "exact_match"): {"value": v, "stderr": None}}
                    for k, v in acc.items()},
        "efficiency": {"per_task": per_task, "overall_skip": skip, "tflops_analytic": tflops,
                       "routing_all_tokens": {"per_layer": layers, "kept_share_all_layers": 1 - skip / 2}},
        "peak_memory": {}, "n_samples": 4 * n, "n_records": 4 * n, "files": [],
    }


def acc(gqa, sqa, mmmu, textvqa):
    values = {"gqa": gqa, "sqa": sqa, "mmmu": mmmu, "textvqa": textvqa}
    return {k: v / 100 for k, v in values.items() if v is not None}  # None: the run has no such task


RUNS = {
    # released: LLaVA-HR-7B and its γ-MoD-0.3, as the paper prints them (Table 3)
    "llava-hr-7b": make_run("llava-hr-7b", acc(64.2, 67.9, 34.6, 67.1), 19.16),
    "llava-hr-7b-gmod-0.34": make_run("llava-hr-7b-gmod-0.34", acc(63.7, 68.5, 35.6, 65.3), 12.59, skip=0.379),
    # released γ-MoD whose dense host ran only as a random stand-in: no Δ may be taken across the two
    "mgm-hd-7b-gmod-0.34": make_run("mgm-hd-7b-gmod-0.34", acc(62.1, 69.0, 34.1, 66.4), 39.4, skip=0.36),
    "tiny-mgm-hd": make_run("tiny-mgm-hd", acc(0, 0, 75, 0), 1.2e-4, n=4),
    # random stand-ins of LLaVA-1.5 dense and γ-MoD
    "tiny-llava": make_run("tiny-llava", acc(0, 25, 50, 0), 6.6e-5, n=4),
    "tiny-llava-gmod": make_run("tiny-llava-gmod", acc(25, 0, 75, 0), 3.2e-5, skip=0.7, n=4),
    # trained here (the reproduction's layout, its own task set: no MMMU): dense and γ-MoD-0.5, which loses more
    # than the paper's LLaVA-7B γ-MoD-0.5 does
    "seed0-eval-dense-released": make_run("/cache/dense", acc(60, 70, None, 50), 2e-4),
    "seed0-eval-gamma-0.5-released": make_run("/cache/gamma", acc(40, 50, None, 30), 1e-4, skip=0.5),
    "seed0-eval-gamma-0.5-fixed0.5": make_run("/cache/gamma", acc(40, 50, None, 30), 1e-4, skip=0.5),
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for folder, run in RUNS.items():
        (root / folder).mkdir()
        (root / folder / "run.json").write_text(json.dumps(run))
    return root


@pytest.fixture(scope="module")
def tables(runs_dir):
    runs = load_runs(runs_dir)
    return {spec.name: (spec, build_table(spec, runs)) for spec in TABLES}


def headline_problems(markdown: str) -> list[str]:
    """What a reader's table must not do: a line wider than the page, a row that does not say where its numbers
    come from, an absolute ours-minus-paper on anything but a released checkpoint, a verdict on a stand-in."""
    problems = []
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    for line in markdown.splitlines():
        if len(line) > HEADLINE_WIDTH:
            problems.append(f"wider than {HEADLINE_WIDTH}: {line[:40]}")
    for line in table[2:]:
        first, average, *_, reading = [c.strip() for c in line.strip("|").split("|")]
        kind = first.removeprefix("↳ ").split(" ")[0] if first.startswith("↳ ") else None
        if not (first.endswith(", paper") or kind in KINDS):
            problems.append(f"no source kind: {first}")
        if re.search(r"\(", average) and kind != RELEASED:
            problems.append(f"absolute delta across sources: {first}")
        if kind == STAND_IN and reading != "pipeline check":
            problems.append(f"verdict on a random stand-in: {first}: {reading}")
    return problems


def test_headlines_fit_a_page_name_every_source_and_subtract_only_the_same_checkpoint(tables):
    for name, (spec, rows) in tables.items():
        assert headline_problems(render_markdown(spec, rows)) == [], name
    spec, rows = tables["gamma_mod_table3"]
    _, cells = headline(spec, rows)
    ours = {c[0]: c for c in cells if c[0].startswith("↳")}
    assert set(ours) == {"↳ released llava-hr-7b", "↳ released llava-hr-7b-gmod-0.34",
                         "↳ released mgm-hd-7b-gmod-0.34", "↳ stand-in tiny-mgm-hd", "↳ trained dense",
                         "↳ stand-in tiny-llava-gmod", "↳ trained gamma-0.5"}
    assert ours["↳ released llava-hr-7b-gmod-0.34"][1] == "58.3 (+0.0)"  # ours minus paper: the same checkpoint
    assert ours["↳ stand-in tiny-llava-gmod"][1] == "25.0"
    assert ours["↳ trained gamma-0.5"][1] == "40.0*"  # over the benchmarks it ran, said in a note
    assert "*: ours ran only GQA, SQA-IMG, TextVQA of the average" in render_markdown(spec, rows)


def test_effects_are_taken_against_the_dense_host_of_the_same_source(tables):
    spec, rows = tables["gamma_mod_table3"]
    by_label = {row.label: row for row in rows}
    hr = by_label["LLaVA-HR-7B γ-MoD-0.3"]
    assert (hr.source.kind, hr.host_source.model) == (RELEASED, "llava-hr-7b")
    assert hr.ours.delta_points == pytest.approx(58.275 - 58.45)
    assert hr.ours.ratios["TFLOPs×"] == pytest.approx(12.59 / 19.16)
    assert hr.reading == "acc within noise"
    # LLaVA-7B: the dense row comes from the trained model, γ-MoD-0.3 only from a stand-in: its host is the stand-in
    llava = by_label["LLaVA-7B γ-MoD-0.3"]
    assert (llava.source.model, llava.host_source.model) == ("tiny-llava-gmod", "tiny-llava")
    assert llava.ours.delta_points == pytest.approx(25 - 18.75) and llava.reading == "pipeline check"
    trained = by_label["LLaVA-7B γ-MoD-0.5"]
    assert (trained.source.kind, trained.host_source.model) == (TRAINED, "dense")
    # like with like: ours ran no MMMU, so both sides average GQA, SQA-IMG and TextVQA (-33 % against -21.6 %)
    assert trained.average_over == ("gqa_acc", "sqa_acc", "textvqa_acc")
    assert trained.ours.delta_relative == pytest.approx(-100 / 3)
    assert trained.paper_over_same == pytest.approx(100 * ((41.4 + 62.3 + 42.9) / (62.0 + 66.8 + 58.2) - 1))
    assert trained.reading == "acc did not hold"  # beyond the sampling noise
    mgm = by_label["MGM-HD-7B γ-MoD-0.3"]
    assert mgm.source.kind == RELEASED and mgm.host_source.kind == "not run"
    assert mgm.ours.delta_points is None and mgm.ours.ratios["TFLOPs×"] is None and mgm.reading == "no released host"
    assert mgm.ours.ratios["skip %"] == pytest.approx(36.0)  # a share needs no host
    assert by_label["MGM-HD-7B dense"].source.model == "tiny-mgm-hd"
    assert by_label["LLaVA-HR-13B dense"].reading == "ours not run"


def test_detail_subtracts_the_paper_only_for_the_released_checkpoint(tables):
    for name, (spec, rows) in tables.items():
        frame = detail(spec, rows)
        subtracted = frame[frame["ours_minus_paper"] != ""]
        assert set(subtracted["ours_from"]) <= {RELEASED}, name
        for _, line in subtracted.iterrows():
            assert line["ours_minus_paper"] == pytest.approx(line["ours"] - line["paper"], abs=0.11)
    frame = detail(*tables["gamma_mod_table3"])
    hr = frame[(frame["row"] == "LLaVA-HR-7B γ-MoD-0.3") & (frame["metric"] == "gqa_acc")].iloc[0]
    assert (hr["paper"], hr["ours"], hr["ours_minus_paper"]) == (63.7, 63.7, 0.0)
    assert (hr["paper_vs_dense"], hr["ours_vs_dense"], hr["vs_dense"]) == (-0.5, -0.5, "points")
    stand_in = frame[(frame["row"] == "LLaVA-7B γ-MoD-0.3") & (frame["metric"] == "gqa_acc")].iloc[0]
    assert stand_in["ours_minus_paper"] == "" and stand_in["ours_vs_dense"] == 25.0


def test_an_unmapped_paper_column_says_why(tables):
    spec, rows = tables["pmod_table1"]
    frame = detail(spec, rows)
    average = frame[(frame["metric"] == "avg") & (frame["ours_from"] != "not run")]
    assert len(average) and all(v.startswith("not comparable: the paper's average includes") for v in average["ours"])
    for name, (spec, rows) in tables.items():
        frame = detail(spec, rows)
        reasoned = frame[frame["metric"].isin([*UNMAPPED, *spec.unmapped]) & (frame["ours_from"] != "not run")]
        assert all(":" in v and v != "not run" for v in reasoned["ours"]), name
    with pytest.raises(KeyError, match="no mapping and no reason"):
        metric_value({"metrics": {}}, "a_new_benchmark")


def test_the_checker_catches_what_it_is_for(tables):
    spec, rows = tables["gamma_mod_table3"]
    markdown = render_markdown(spec, rows)
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if "tiny-llava-gmod" in line:
            lines[i] = line.replace("| 25.0 ", "| 25.0 (-29.4) ", 1).replace("pipeline check", "acc held")
        elif "↳ trained dense" in line:
            lines[i] = line.replace("↳ trained dense", "↳ dense")
        elif "tiny-mgm-hd " in line:
            lines[i] = line + " " * 40
    doctored = "\n".join(lines)
    problems = headline_problems(doctored)
    assert any(p.startswith("absolute delta across sources: ↳ stand-in tiny-llava-gmod") for p in problems)
    assert "no source kind: ↳ dense" in problems
    assert any(p.startswith("wider than 120") for p in problems)
    assert any(p.startswith("verdict on a random stand-in") for p in problems)


def test_written_tables_index_and_plots(runs_dir, tmp_path):
    from modbench.suite.plots import write_plots

    written = write_tables(runs_dir, tmp_path)
    assert {p.suffix for p in written} == {".md", ".tex", ".csv"} and len(written) == 3 * len(TABLES) + 1
    index = (tmp_path / "README.md").read_text()
    assert all(f"({spec.name}.md)" in index for spec in TABLES) and "reproduction/quick/reproduction.md" in index
    paths = write_plots(runs_dir, tmp_path)
    assert {p.name for p in paths} == {"accuracy_change_vs_tflops_ratio.png", "accuracy_change_vs_tflops_ratio.svg",
                                        "skip_ratio_by_layer.png", "skip_ratio_by_layer.svg"}
    assert all(p.stat().st_size > 1000 for p in paths)
    index = (tmp_path / "README.md").read_text()
    assert "![accuracy_change_vs_tflops_ratio](accuracy_change_vs_tflops_ratio.svg)" in index
    svg = (tmp_path / "accuracy_change_vs_tflops_ratio.svg").read_text()
    assert "paper: γ-MoD" in svg and "ours: released checkpoint" in svg and "ours: random stand-in" in svg
    first = {p.name: p.read_bytes() for p in paths}
    again = write_plots(runs_dir, tmp_path)  # the same data gives the same bytes (committed plots stay put)
    assert {p.name: p.read_bytes() for p in again} == first
