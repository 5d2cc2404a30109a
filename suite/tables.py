"""`modbench table`: the papers' tables beside ours, as effects that compare across scales.

Each paper row is followed by ours, and ours names its source: a released checkpoint (the very model the paper row
describes), a model this suite trained (`modbench reproduce`'s runs), or a random stand-in (a tiny twin with
untrained weights: a pipeline check whose accuracies mean nothing). Effects are taken against the dense host of the
same source: Δ accuracy in points and relative %, TFLOPs / speed ratios, skip ratio, KV share. Ours minus paper
appears only where ours is the released checkpoint itself. Per table: Markdown (a headline within 120 characters),
CSV and LaTeX (every metric), and an index, README.md, that embeds the plots.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from modbench.suite.project import paper_table
from modbench.tasks import benchmarks as registered

NOT_RUN = "not run"
HEADLINE_WIDTH = 120
RELEASED, TRAINED, STAND_IN = "released", "trained", "stand-in"

# The papers' per-benchmark columns, read off the benchmark registrations (tasks/benchmarks.py: each names its
# paper columns, the metric they print and its display name): paper column -> (local task, metric, scale to the
# paper's unit); skip column -> local task; paper column -> the name a table prints
BENCHMARKS = {column: (m.task, m.name, m.scale) for column, (_, m) in registered.paper_columns().items()}
SKIPS = registered.skip_columns()
DISPLAY = {column: benchmark.display for column, (benchmark, _) in registered.paper_columns().items()}
AVERAGE = ("gqa_acc", "sqa_acc", "mmmu_acc", "textvqa_acc")  # the γ-MoD papers' "Average"
TFLOPS = ("tflops", "avg_tflops", "inference_tflops")
SPEED = "not measured by benchmark runs: speed needs a forced output length (`modbench latency`)"
UNMAPPED = {  # paper column -> why ours has no number
    "rwqa": "not run: no local RealWorldQA task", "ai2d": "not run: no local AI2D task",
    "docvqa": "not run: no local DocVQA task", "chartqa": "not run: no local ChartQA task",
    "infovqa": "not run: no local InfographicVQA task", "okvqa": "not run: no local OK-VQA task",
    "training_time_h": "not measured by benchmark runs (trained models: results/reproduction/*/reproduction.md)",
    "inference_samples_per_s": SPEED, "speed_samples_per_s": SPEED,
    "inference_memory_gb": "not comparable: runs record the process's peak memory, not the model's",
}
SHARES = {"avg_skip", "kv_cache_storage_pct", *SKIPS}  # already relative to dense: no ratio taken
COSTS = {*TFLOPS, "training_time_h", "inference_samples_per_s", "speed_samples_per_s", "inference_memory_gb"}


def _mean(values: list) -> float | str:
    """Mean of numbers, else the first reason among them."""
    reasons = [v for v in values if not isinstance(v, (int, float))]
    return reasons[0] if reasons else statistics.fmean(values)


def metric_value(run: dict, metric: str) -> float | str:
    """A paper column's value in one run, in the paper's unit, or why there is none."""
    efficiency = run.get("efficiency") or {}
    per_task = efficiency.get("per_task", {})
    if metric in BENCHMARKS:
        task, name, scale = BENCHMARKS[metric]
        value = run["metrics"].get(task, {}).get(name, {}).get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value * scale
        return value if isinstance(value, str) else NOT_RUN
    if metric in SKIPS:
        value = per_task.get(SKIPS[metric], {}).get("overall_skip")
        return NOT_RUN if value is None else 100 * value
    if metric == "avg_skip":  # the four benchmarks of the papers' average, else the run's own share
        if all(SKIPS[m] in per_task for m in SKIPS):
            return _mean([metric_value(run, m) for m in SKIPS])
        value = efficiency.get("overall_skip")
        return NOT_RUN if value is None else 100 * value
    if metric == "avg_acc":
        return _mean([metric_value(run, m) for m in AVERAGE])
    if metric in TFLOPS:  # the four benchmarks of the papers' average, else the run's own mean
        values = [per_task.get(SKIPS[m], {}).get("tflops_analytic") for m in SKIPS]
        if all(v is not None for v in values):
            return statistics.fmean(values)
        return efficiency.get("tflops_analytic", NOT_RUN)
    if metric == "kv_cache_storage_pct":
        routing = efficiency.get("routing_all_tokens")
        return 100 * routing["kept_share_all_layers"] if routing else NOT_RUN
    if metric in UNMAPPED:
        return UNMAPPED[metric]
    raise KeyError(f"paper column {metric!r} has no mapping and no reason: name it on its benchmark's registration "
                   "(tasks/benchmarks.py paper_columns), or give the reason in suite/tables.py")


def _sampling_se(run: dict, metric: str) -> float | None:
    """Binomial standard error of a percentage benchmark (Agresti's +1/+2, so 0 % still has noise)."""
    from modbench.suite.check import task_samples

    task, _, scale = BENCHMARKS[metric]
    value, n = metric_value(run, metric), task_samples(run, task)
    if scale != 100.0 or not isinstance(value, float) or not n:
        return None
    p = (value / 100 * n + 1) / (n + 2)
    return 100 * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------------------------------------
# the tables


@dataclass(frozen=True)
class Sources:
    """Where ours may come from for one paper row; the first that has a run wins."""
    released: str = ""  # the registry variant of the checkpoint the paper row describes
    trained: str = ""  # the `modbench reproduce` row that trains its counterpart at CPU scale
    tiny: str = ""  # the random tiny twin that stands in for it


@dataclass(frozen=True)
class Column:
    """A headline efficiency column: the paper's column (None: the paper prints none) beside ours."""
    header: str
    paper: str | None
    ours: str


@dataclass
class TableSpec:
    name: str
    csv: str
    title: str
    keys: list[str]  # columns identifying a row
    label: Callable[[tuple], str]
    host: Callable[[tuple], tuple]  # the dense row a row is measured against
    scheme: str  # the routing scheme (models.config.SCHEMES) of the paper's MoD rows: gamma (γ-MoD), pmod (p-MoD)
    average: tuple[str, ...]  # the headline's average accuracy: these paper columns ...
    average_column: str | None = None  # ... as the paper prints it, when it does
    efficiency: list[Column] = field(default_factory=list)
    unmapped: dict[str, str] = field(default_factory=dict)  # table-specific reasons, over UNMAPPED

    @property
    def rows(self) -> dict[tuple, Sources]:
        """Where ours may come from, per paper row (absent: not run): read off the variants' and the reproduction
        rows' registrations (`models.variants.register_variant(paper=, twin=)`, `suite.reproduce.ROWS`)."""
        return paper_sources().get(self.name, {})

    @property
    def average_text(self) -> str:
        names = ", ".join(DISPLAY.get(c, c) for c in self.average)
        return f"the paper's average ({names})" if self.average_column else f"mean of {names}"


def paper_sources() -> dict[str, dict[tuple, Sources]]:
    """table name -> paper row key -> Sources, from the registries: a variant names the paper rows it is the
    model of (its tiny twin stands in for it), a reproduction row the ones it is trained for. One paper row has
    at most one of each."""
    from modbench.models.variants import variant_entries
    from modbench.suite.reproduce import ROWS

    out: dict[str, dict[tuple, Sources]] = {}

    def claim(row, role: str, name: str, **fields) -> None:
        sources = out.setdefault(row.table, {}).get(tuple(row.key), Sources())
        if getattr(sources, role):
            raise ValueError(f"{row.table} row {row.key}: both {getattr(sources, role)!r} and {name!r} claim it")
        out[row.table][tuple(row.key)] = replace(sources, **fields)

    for entry in variant_entries():
        for row in entry.paper:  # a variant without a hub id (a model the authors did not release) is no source
            claim(row, "released", entry.name, released=entry.name if entry.config.hub_id else "", tiny=entry.twin)
    for name, trained in ROWS.items():
        for row in trained.paper:
            claim(row, "trained", name, trained=name)
    return out


def _variant(name: str) -> str:
    return name.replace("gamma-mod-", "γ-MoD-")


T1_LABELS = {"baseline": "", "mod_layer": "", "masked_token": "masked ", "shared_router": "router ",
             "routing_ratio": "routing "}
TFLOPS_X, SKIP_PCT, KV_PCT = "TFLOPs×", "skip %", "KV %"
TABLES = [
    TableSpec("gamma_mod_table1", "gamma_mod_table1_ablation.csv", "γ-MoD Table 1: ablations on LLaVA-HR-7B",
              ["section", "setting"],
              label=lambda k: T1_LABELS[k[0]] + k[1], host=lambda k: ("baseline", "LLaVA-HR dense"), scheme="gamma",
              average=AVERAGE, average_column="avg_acc",
              efficiency=[Column(TFLOPS_X, "tflops", "tflops"), Column(SKIP_PCT, "avg_skip", "avg_skip")]),
    TableSpec("gamma_mod_table3", "gamma_mod_table3_scalability.csv",
              "γ-MoD Table 3: dense vs γ-MoD-0.3 / 0.5 on four hosts", ["model", "variant", "params"],
              label=lambda k: f"{k[0].replace('Mini-Gemini-HD', 'MGM-HD')}-{k[2]} {_variant(k[1])}",
              host=lambda k: (k[0], "dense", k[2]), scheme="gamma", average=AVERAGE, average_column="avg_acc",
              efficiency=[Column(TFLOPS_X, "avg_tflops", "avg_tflops"), Column(SKIP_PCT, "avg_skip", "avg_skip")]),
    TableSpec("gamma_mod_table4", "gamma_mod_table4_efficiency.csv",
              "γ-MoD Table 4: training and inference efficiency, LLaVA-HR-7B on one A100", ["method"],
              label=lambda k: k[0] if "dense" in k[0] else f"LLaVA-HR-7B {_variant(k[0])}",
              host=lambda k: ("LLaVA-HR-7B dense",), scheme="gamma", average=AVERAGE, average_column="avg_acc",
              efficiency=[Column(TFLOPS_X, "inference_tflops", "inference_tflops"),
                          Column("speed×", "inference_samples_per_s", "inference_samples_per_s"),
                          Column("train×", "training_time_h", "training_time_h")]),
    TableSpec("gamma_mod_table6", "gamma_mod_table6_nine_benchmarks.csv", "γ-MoD Table 6: nine benchmarks and speed",
              ["group", "method", "params"],
              label=lambda k: f"{_variant(k[1])}-{k[2]}",
              host=lambda k: ("dense", {"gamma-mod-LLaVA": "LLaVA-1.5", "gamma-mod-LLaVA-HR": "LLaVA-HR"}.get(k[1], k[1]),
                              k[2]),
              scheme="gamma", average=("textvqa", "vqav2", "gqa", "sqa_img", "pope", "mmb", "mmmu"),
              efficiency=[Column(TFLOPS_X, None, "avg_tflops"), Column(SKIP_PCT, None, "avg_skip"),
                          Column("speed×", "speed_samples_per_s", "speed_samples_per_s")]),
    TableSpec("pmod_table1", "pmod_table1_general.csv", "p-MoD Table 1: general benchmarks, TFLOPs and KV cache",
              ["model", "params"], label=lambda k: f"{k[0]}-{k[1]}",
              host=lambda k: (k[0].replace("p-MoD-", ""), k[1]), scheme="pmod", average=("seed", "mmb", "pope", "gqa"),
              efficiency=[Column(TFLOPS_X, "inference_tflops", "inference_tflops"),
                          Column(KV_PCT, "kv_cache_storage_pct", "kv_cache_storage_pct")],
              unmapped={"avg": "not comparable: the paper's average includes RealWorldQA and AI2D, which we do not "
                               "run; the headline averages SEED, MMB, POPE and GQA for paper and ours alike"}),
    TableSpec("pmod_table2", "pmod_table2_text_rich.csv", "p-MoD Table 2: text-rich benchmarks",
              ["model", "params"], label=lambda k: f"{k[0]}-{k[1]}",
              host=lambda k: (k[0].replace("p-MoD-", ""), k[1]), scheme="pmod", average=("textvqa", "mmmu", "sqa"),
              efficiency=[Column(TFLOPS_X, None, "tflops"), Column(KV_PCT, None, "kv_cache_storage_pct")],
              unmapped={"avg": "not comparable: the paper's average includes DocVQA, ChartQA, InfoVQA and OK-VQA, "
                               "which we do not run; the headline averages TextVQA, MMMU and SQA for both"}),
]
TABLE_BLURBS = {
    "gamma_mod_table1": "ablations: MoD layers, masked tokens, router sharing, routing ratio",
    "gamma_mod_table3": "scalability: γ-MoD-0.3 / 0.5 vs dense on LLaVA, LLaVA-HR, Mini-Gemini-HD",
    "gamma_mod_table4": "efficiency: TFLOPs, speed and training time as ratios to dense LLaVA-HR-7B",
    "gamma_mod_table6": "nine benchmarks and speed: dense hosts against γ-MoD",
    "pmod_table1": "p-MoD on LLaVA-1.5 / LLaVA-NeXT: general benchmarks, TFLOPs and KV-cache share",
    "pmod_table2": "p-MoD on text-rich benchmarks (TextVQA, MMMU, SQA run; DocVQA and the like not)",
}


# ---------------------------------------------------------------------------------------------------------
# sources of "ours"

REPRODUCTION_RUN = re.compile(r"seed(\d+)-eval-(.+)-released$")  # `modbench reproduce`'s runs/ layout


def load_runs(runs_dir: str | Path) -> dict[str, dict[int, dict]]:
    """Finished runs, validated against the results schema, by source key -> seed -> run: the model name (its
    newest run, seed 0), or `trained:<row>` for the reproduction's evaluations under the released rule."""
    from modbench.suite.results import load_results

    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(runs_dir).glob("*/run.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        run = load_results(path)
        if run.get("status") != "ok":
            continue
        trained = REPRODUCTION_RUN.match(path.parent.name)
        key = f"trained:{trained[2]}" if trained else run["spec"]["model"]
        runs.setdefault(key, {})[int(trained[1]) if trained else 0] = run
    return runs


@dataclass(frozen=True)
class Source:
    kind: str  # released / trained / stand-in / not run
    model: str = ""
    runs: tuple = ()  # (seed, run) pairs

    @property
    def label(self) -> str:
        seeds = f" ({len(self.runs)} seeds)" if len(self.runs) > 1 else ""
        return f"{self.kind} {self.model}{seeds}" if self.model else self.kind

    def value(self, metric: str) -> float | str:
        return _mean([metric_value(run, metric) for _, run in self.runs]) if self.runs else NOT_RUN


def resolve(sources: Sources | None, runs: dict, kind: str | None = None, seeds: set | None = None) -> Source:
    if sources is not None:
        for found, key, model in ((RELEASED, sources.released, sources.released),
                                  (TRAINED, f"trained:{sources.trained}", sources.trained),
                                  (STAND_IN, sources.tiny, sources.tiny)):
            if model and key in runs and kind in (None, found):
                pairs = tuple((s, r) for s, r in sorted(runs[key].items()) if seeds is None or s in seeds)
                if pairs:
                    return Source(found, model, pairs)
    return Source(NOT_RUN)


# ---------------------------------------------------------------------------------------------------------
# one row: paper beside ours


@dataclass
class Effects:
    """One side of a row (the paper, or ours) against the dense host of the same source."""
    values: dict[str, float | str]  # paper column -> value (ours: or why none)
    average: float | str
    delta_points: float | None = None
    delta_relative: float | None = None  # % of the host's average
    ratios: dict[str, float | str] = field(default_factory=dict)  # efficiency column -> ratio to host (or share)
    host_values: dict = field(default_factory=dict)


@dataclass
class TableRow:
    key: tuple
    label: str
    host_key: tuple
    source: Source
    host_source: Source
    paper: Effects
    ours: Effects | None
    ours_minus_paper: float | None = None  # only for the released checkpoint the paper row describes
    verdict: str = ""
    average_over: tuple = ()  # set when ours ran only these of the average's benchmarks
    paper_over_same: float | None = None  # the paper's relative Δ over those benchmarks

    @property
    def is_host(self) -> bool:
        return self.key == self.host_key

    @property
    def reading(self) -> str:
        if self.source.kind == NOT_RUN:
            return "ours not run"
        if self.source.kind == STAND_IN:
            return "pipeline check"
        if self.is_host:
            return "dense host"
        if self.host_source.kind == NOT_RUN:
            return f"no {self.source.kind} host"
        return self.verdict


def _paper_average(spec: TableSpec, prow: dict) -> float:
    if spec.average_column:
        return float(prow[spec.average_column])
    return statistics.fmean(float(prow[c]) for c in spec.average)


def _effects(values: dict, average, host_values: dict | None, host_average, spec: TableSpec) -> Effects:
    effects = Effects(values, average, host_values=host_values or {})
    if host_values is not None and isinstance(average, (int, float)) and isinstance(host_average, (int, float)):
        effects.delta_points = average - host_average
        effects.delta_relative = 100 * effects.delta_points / host_average if host_average else None
    for column in spec.efficiency:
        key = column.paper if column.paper in values else column.ours
        value, base = values.get(key), (host_values or {}).get(key)
        if key in SHARES:
            effects.ratios[column.header] = value
        elif isinstance(value, (int, float)) and isinstance(base, (int, float)) and base:
            effects.ratios[column.header] = value / base
        else:
            effects.ratios[column.header] = None
    return effects


def _average_over(spec: TableSpec, source: Source, host_source: Source, prow: dict) -> tuple:
    """The average's benchmarks, or, where ours (or its host) lacks some and the paper prints each of the rest,
    those that both ran (a trained model evaluates its own task set)."""
    ran = tuple(m for m in spec.average if isinstance(source.value(m), float)
                and (host_source.kind == NOT_RUN or isinstance(host_source.value(m), float)))
    return ran if ran and all(m in prow for m in ran) else spec.average


def _verdict(row_source: Source, host_source: Source, keys: tuple, ours: Effects, paper_relative) -> str:
    """Ours' relative Δ accuracy against the paper's: held (no worse beyond the critical value's standard errors),
    did not hold, or within noise. The error: the seed spread (Student's t), else the benchmarks' binomial
    sampling noise (1.96): the reproduction's verdict (suite.reproduce.verdict)."""
    from modbench.suite.reproduce import t_critical, verdict

    if ours.delta_relative is None or paper_relative is None:
        return "no estimate"
    per_seed = []
    hosts = dict(host_source.runs)
    for seed, run in row_source.runs:
        if seed not in hosts:
            continue
        base = _mean([metric_value(hosts[seed], k) for k in keys])
        mine = _mean([metric_value(run, k) for k in keys])
        if isinstance(base, float) and isinstance(mine, float) and base:
            per_seed.append(100 * (mine - base) / base)
    if len(per_seed) > 1:
        se = statistics.stdev(per_seed) / math.sqrt(len(per_seed))
    else:
        terms = [_sampling_se(run, k) for _, run in (row_source.runs[0], host_source.runs[0]) for k in keys]
        if any(t is None for t in terms):
            return "no estimate"
        host_average = _mean([metric_value(host_source.runs[0][1], k) for k in keys])
        se = 100 * math.sqrt(sum(t * t for t in terms)) / len(keys) / host_average
    return "acc " + verdict(ours.delta_relative, se, paper_relative, ">=",
                            t_critical(len(per_seed) - 1 if len(per_seed) > 1 else None))


def build_table(spec: TableSpec, runs: dict) -> list[TableRow]:
    with paper_table(spec.csv) as handle:
        paper = pd.read_csv(handle, dtype={k: str for k in spec.keys})
    metrics = [c for c in paper.columns if c not in spec.keys]
    for metric in metrics:  # a paper column without a mapping must carry a reason
        if metric not in spec.unmapped:
            metric_value({"metrics": {}}, metric)
    prows = {tuple(str(r[k]) for k in spec.keys): r.to_dict() for _, r in paper.iterrows()}
    extra = [c.ours for c in spec.efficiency if c.ours not in metrics]

    def ours_values(source: Source) -> dict:
        return {m: spec.unmapped.get(m) or source.value(m) for m in [*metrics, *extra]}

    rows, sources = [], spec.rows  # read off the registries once per table
    for key, prow in prows.items():
        host_key = spec.host(key)
        host_prow = prows[host_key]
        paper_values = {m: prow[m] for m in metrics}
        paper_effects = _effects(paper_values, _paper_average(spec, prow), {m: host_prow[m] for m in metrics},
                                 _paper_average(spec, host_prow), spec)
        source = resolve(sources.get(key), runs)
        seeds = {s for s, _ in source.runs} if source.kind == TRAINED else None
        host_source = (resolve(sources.get(host_key), runs, kind=source.kind, seeds=seeds)
                       if source.kind != NOT_RUN else Source(NOT_RUN))
        row = TableRow(key, spec.label(key), host_key, source, host_source, paper_effects, None)
        if source.kind != NOT_RUN:
            values = ours_values(source)
            keys = _average_over(spec, source, host_source, prow)
            if keys != spec.average:  # a like-with-like subset: the paper's Δ over the same benchmarks
                row.average_over = keys
                paper_points = (statistics.fmean(float(prow[m]) for m in keys)
                                - statistics.fmean(float(host_prow[m]) for m in keys))
                row.paper_over_same = 100 * paper_points / statistics.fmean(float(host_prow[m]) for m in keys)
            average = _mean([source.value(m) for m in keys])
            if host_source.kind == NOT_RUN:
                row.ours = _effects(values, average, None, None, spec)
            else:
                row.ours = _effects(values, average, ours_values(host_source),
                                    _mean([host_source.value(m) for m in keys]), spec)
            if source.kind == RELEASED and isinstance(average, float) and not row.average_over:
                row.ours_minus_paper = average - paper_effects.average
            if source.kind in (RELEASED, TRAINED) and not row.is_host and host_source.kind != NOT_RUN:
                paper_relative = row.paper_over_same if row.average_over else paper_effects.delta_relative
                row.verdict = _verdict(source, host_source, keys, row.ours, paper_relative)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# rendering: numbers rounded as the papers print them


def fmt_number(value, metric: str = "") -> str:
    if value is None:
        return "—"
    if not isinstance(value, (int, float)):
        return str(value)
    if metric in TFLOPS:  # 0.1 at the papers' scale, 3 significant figures for tiny models
        return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"
    return f"{value:.1f}"


def signed(value: float, digits: int = 1) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.0"


def fmt_delta(points: float | None, relative: float | None) -> str:
    if points is None:
        return "—"
    if relative is None:
        return f"{signed(points)} (n/a)"
    return f"{signed(points)} ({signed(relative, 1 if abs(relative) < 100 else 0)} %)"


def fmt_ratio(value, header: str) -> str:
    if value is None or not isinstance(value, (int, float)):
        return "—"
    return f"{value:.1f}" if header in (SKIP_PCT, KV_PCT) else f"{value:.2f}"


def _pipe_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def headline(spec: TableSpec, rows: list[TableRow]) -> tuple[list[str], list[list[str]]]:
    """The compact table: per paper row, the paper's line, then ours (what it came from, the same effects)."""
    headers = ["row / numbers from", "avg acc", "Δ acc pt (rel)", *[c.header for c in spec.efficiency], "reading"]
    out = []
    for row in rows:
        for side in ("paper", "ours"):
            effects = row.paper if side == "paper" else row.ours
            if effects is None:
                continue
            first = f"{row.label}, paper" if side == "paper" else f"↳ {row.source.label}"
            average = fmt_number(effects.average)
            if side == "ours" and row.ours_minus_paper is not None:
                average += f" ({signed(row.ours_minus_paper)})"
            if not isinstance(effects.average, (int, float)):
                average = "—"
            elif side == "ours" and row.average_over:
                average += "*"
            delta = "host" if row.is_host else fmt_delta(effects.delta_points, effects.delta_relative)
            ratios = [fmt_ratio(effects.ratios.get(c.header), c.header) for c in spec.efficiency]
            reading = ("ours not run" if row.source.kind == NOT_RUN else "") if side == "paper" else row.reading
            out.append([first, average, delta, *ratios, reading])
    return headers, out


def _notes(spec: TableSpec, rows: list[TableRow]) -> list[str]:
    kinds = {row.source.kind for row in rows}
    ratio_headers = [c.header for c in spec.efficiency if c.header not in (SKIP_PCT, KV_PCT)]
    headers = {c.header for c in spec.efficiency}
    legend = [f"avg acc: {spec.average_text}.",
              "Δ acc: against the dense host of the same source, in points (relative %).",
              f"{', '.join(ratio_headers)}: ratio to that host." if ratio_headers else "",
              "skip %: share of prompt tokens the MoD layers skip." if SKIP_PCT in headers else "",
              "KV %: K/V entries kept, as a share of dense." if KV_PCT in headers else "",
              "—: the paper prints none, or ours is not measured (below)."]
    notes = [" ".join(part for part in legend if part)]
    if STAND_IN in kinds:
        notes.append("stand-in: a random tiny twin (untrained weights) run on fixture data. Its accuracies mean "
                     "nothing; its row checks the pipeline (scoring, routing, TFLOPs, skip), not the paper's claim.")
    if RELEASED in kinds:
        notes.append("released: the very checkpoint the paper row describes; only there does avg acc add, in "
                     "brackets, ours minus the paper.")
    if TRAINED in kinds:
        notes.append("trained: a model `modbench reproduce` trained at CPU scale; its own tables, with every claim, "
                     "are in results/reproduction/<preset>/reproduction.md.")
    for subset in dict.fromkeys(row.average_over for row in rows if row.average_over):
        names = ", ".join(DISPLAY.get(m, m) for m in subset)
        notes.append(f"*: ours ran only {names} of the average; its Δ and reading compare the paper's Δ over the "
                     "same benchmarks.")
    if kinds & {RELEASED, TRAINED}:
        notes.append("reading: ours' relative Δ acc against the paper's — held (no worse beyond 1.96 standard "
                     "errors of binomial sampling noise, or Student's t over seeds' spread), did not hold, or "
                     "within noise.")
    reasons: dict[str, list[str]] = {}
    paper_columns = list(rows[0].paper.values) if rows else []
    for metric in paper_columns:
        reason = spec.unmapped.get(metric) or UNMAPPED.get(metric)
        if reason:
            reasons.setdefault(reason, []).append(metric)
    if reasons:
        notes.append("Not compared: " + "; ".join(f"{', '.join(m)} — {r}" for r, m in reasons.items()) + ".")
    notes.append(f"Every metric, paper beside ours: {spec.name}.csv, {spec.name}.tex.")
    return ["\n".join(textwrap.wrap(n, HEADLINE_WIDTH - 2, subsequent_indent="  ")) for n in notes]


def render_markdown(spec: TableSpec, rows: list[TableRow]) -> str:
    headers, cells = headline(spec, rows)
    intro = f"Paper: results/paper/{spec.csv}. Each paper row is followed by ours (↳), which names its source."
    parts = [f"# {spec.title}", "", textwrap.fill(intro, HEADLINE_WIDTH), "", _pipe_table(headers, cells), ""]
    parts += [f"- {n}" for n in _notes(spec, rows)]
    return "\n".join(parts) + "\n"


def _round(value, metric: str):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return value
    if metric in TFLOPS:
        return round(value, 1) if abs(value) >= 1 else float(f"{value:.3g}")
    return round(value, 1)


def detail(spec: TableSpec, rows: list[TableRow]) -> pd.DataFrame:
    """Every paper column (and the headline's own), paper beside ours, one line per row and metric."""
    records = []
    for row in rows:
        metrics = [*row.paper.values, *[c.ours for c in spec.efficiency if c.ours not in row.paper.values]]
        for metric in ["headline_avg", *metrics]:
            paper = row.paper.average if metric == "headline_avg" else row.paper.values.get(metric)
            ours = NOT_RUN if row.ours is None else (row.ours.average if metric == "headline_avg"
                                                      else row.ours.values.get(metric))
            record = {"row": row.label, "host": spec.label(row.host_key), "ours_from": row.source.kind,
                      "ours_model": row.source.model, "metric": metric,
                      "paper": "" if paper is None else (_round(paper, "") if metric == "headline_avg" else paper),
                      "ours": _round(ours, metric)}
            record.update(_versus(row, metric, paper, ours))
            same_checkpoint = row.source.kind == RELEASED and isinstance(ours, (int, float)) and isinstance(
                paper, (int, float))
            if metric == "headline_avg":
                same_checkpoint = row.ours_minus_paper is not None
            record["ours_minus_paper"] = _round(ours - paper, metric) if same_checkpoint else ""
            record["note"] = ""
            if metric == "headline_avg" and row.average_over:
                record["note"] = f"ours over {', '.join(DISPLAY.get(m, m) for m in row.average_over)} only"
                if not row.is_host:
                    record["note"] += f"; the paper's relative Δ over the same: {signed(row.paper_over_same)} %"
            records.append(record)
    return pd.DataFrame(records)


def _versus(row: TableRow, metric: str, paper, ours) -> dict:
    """Paper and ours against the host of the same source: points and relative % for accuracies, a ratio for
    costs, nothing for shares (already relative to dense)."""
    out = {"vs_dense": "", "paper_vs_dense": "", "ours_vs_dense": "", "paper_rel_pct": "", "ours_rel_pct": ""}
    if metric in SHARES or row.is_host:
        return out
    out["vs_dense"] = "ratio" if metric in COSTS else "points"
    sides = [("paper", paper, row.paper)]
    if row.ours is not None and row.host_source.kind != NOT_RUN:
        sides.append(("ours", ours, row.ours))
    for side, value, effects in sides:
        if metric == "headline_avg":
            points, relative = effects.delta_points, effects.delta_relative
        else:
            base = _host_value(row, side, metric)
            if not isinstance(value, (int, float)) or not isinstance(base, (int, float)):
                continue
            if metric in COSTS:
                if base:
                    out[f"{side}_vs_dense"] = round(value / base, 2)
                continue
            points, relative = value - base, (100 * (value - base) / base if base else None)
        if points is not None:
            out[f"{side}_vs_dense"] = round(points, 1)
        if relative is not None:
            out[f"{side}_rel_pct"] = round(relative, 1)
    return out


def _host_value(row: TableRow, side: str, metric: str):
    effects = row.paper if side == "paper" else row.ours
    return effects.host_values.get(metric) if effects is not None else None


def write_index(out_dir: str | Path, runs: dict) -> Path:
    """results/tables/README.md: what each table shows, where ours came from, and the plots."""
    from modbench.suite.results import write_text_atomic

    out_dir = Path(out_dir)
    kinds = {}
    for spec in TABLES:
        for sources in spec.rows.values():
            source = resolve(sources, runs)
            if source.kind != NOT_RUN:
                kinds.setdefault(source.kind, set()).add(source.model)
    lines = ["# The papers' tables beside ours", "",
             "Generated by `modbench table` / `modbench matrix` from the runs listed in runs.json; do not edit.", ""]
    names = {RELEASED: "released checkpoints", TRAINED: "models trained here", STAND_IN: "random stand-ins"}
    counts = ", ".join(f"{len(models)} {names[kind]}" for kind, models in sorted(kinds.items())) or "no runs"
    lines += [f"Sources of \"ours\": {counts}. Each table pairs every paper row with ours and names ours' source."]
    if set(kinds) == {STAND_IN}:
        lines += ["All of them are random stand-ins (tiny twins with untrained weights): these tables check the",
                  "pipeline, not the papers' claims. The claims at CPU scale, from models this suite trains and",
                  "evaluates (verdicts computed from the measured numbers), are in",
                  "[results/reproduction/quick/reproduction.md](../reproduction/quick/reproduction.md),",
                  "written by `modbench reproduce`."]
    else:
        lines += ["The trained-model tables (CPU-scale reproduction, with computed verdicts) are in",
                  "[results/reproduction/quick/reproduction.md](../reproduction/quick/reproduction.md),",
                  "written by `modbench reproduce`."]
    lines += ["", "Each table's headline (relative effects) is its .md; every metric, paper beside ours, is in",
              "the .csv and .tex of the same name.", "", "| table | what it shows |", "|---|---|"]
    lines += [f"| [{spec.title.split(':')[0]}]({spec.name}.md) | {TABLE_BLURBS[spec.name]} |" for spec in TABLES]
    plots = [("accuracy_change_vs_tflops_ratio", "Δ average accuracy against the dense host of the same source vs "
              "the TFLOPs ratio: the papers' points and ours on the same axes."),
             ("skip_ratio_by_layer", "share of tokens each layer skips, per token type (γ-MoD Fig. 4a), for ours.")]
    present = [(name, text) for name, text in plots if (out_dir / f"{name}.svg").exists()]
    if present:
        lines += ["", "## Plots"]
        for name, text in present:
            lines += ["", textwrap.fill(text, HEADLINE_WIDTH), "", f"![{name}]({name}.svg)"]
    return write_text_atomic(out_dir / "README.md", "\n".join(lines) + "\n")


def _latex(frame: pd.DataFrame) -> str:
    return frame.to_latex(index=False, escape=True)


def _latex_detail(frame: pd.DataFrame) -> pd.DataFrame:
    """The detail as printed text: numbers rounded, a reason cut to its head (the CSV keeps it whole)."""
    def cell(value, metric):
        if isinstance(value, str):
            return re.split(r"[:(]", value)[0].strip()
        return fmt_number(value, metric) if metric in TFLOPS else (f"{value:g}" if isinstance(value, (int, float))
                                                                   else value)
    columns = ["row", "ours_from", "metric", "paper", "ours", "paper_vs_dense", "ours_vs_dense", "ours_minus_paper"]
    out = frame[columns].copy()
    for column in ("paper", "ours", "paper_vs_dense", "ours_vs_dense", "ours_minus_paper"):
        out[column] = [cell(v, m if column in ("paper", "ours", "ours_minus_paper") else "")
                       for v, m in zip(out[column], out["metric"])]
    return out


def write_tables(runs_dir: str | Path, out_dir: str | Path) -> list[Path]:
    from modbench.suite.results import write_text_atomic

    runs = load_runs(runs_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in TABLES:
        rows = build_table(spec, runs)
        frame = detail(spec, rows)
        headers, cells = headline(spec, rows)
        base = out_dir / spec.name
        tex_detail = _latex_detail(frame)
        written += [
            write_text_atomic(f"{base}.csv", frame.to_csv(index=False)),
            write_text_atomic(f"{base}.md", render_markdown(spec, rows)),
            write_text_atomic(f"{base}.tex", f"% {spec.title} (results/paper/{spec.csv})\n% headline\n"
                              + _latex(pd.DataFrame(cells, columns=headers)) + "% every metric\n"
                              + _latex(tex_detail)),
        ]
    write_text_atomic(out_dir / "runs.json", json.dumps(
        {key: {str(seed): run["spec"] for seed, run in seeds.items()} if key.startswith("trained:")
         else seeds[max(seeds)]["spec"] for key, seeds in runs.items()}, indent=2))
    written.append(write_index(out_dir, runs))
    return written
