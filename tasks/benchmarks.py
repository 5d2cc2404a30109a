"""The benchmarks, one registration each: what `modbench data prepare` accepts, how fixtures are drawn, the
γ-MoD / LLaVA-HR evaluation scripts' answer length (the plugin's `llava` protocol), and which numbers of its local
tasks the papers' tables print: the named metric choices (local task, lmms-eval metric, scale to the papers' unit),
the one the papers report, their CSV columns and the name a table prints (`modbench table`, `modbench reproduce`).

Which local task reads which benchmark is not listed here: it is the folder of the task YAML's data files
(`data/<benchmark>/<split>.parquet`, see tasks/registry.py), so a task cannot disagree with its benchmark.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modbench.tasks import fixtures

# The llava protocol's answer length when a benchmark asks for a short answer (a word or a number).
SHORT_ANSWER_TOKENS = 6

# What a metric's value is (suite/check.py sizes its noise by it)
SHARE = "share"  # the share of the eval set answered right, 0..1
PERCENT_SUM = "percent sum"  # a sum of per-category percentages (MME: accuracy + accuracy+ per category)
SCORE = "score"  # no share of the eval set: an F1, a judge's grade
METRIC_KINDS = (SHARE, PERCENT_SUM, SCORE)


@dataclass(frozen=True)
class Metric:
    """One number a benchmark's local task reports (lmms-eval's metric of that name in run.json's
    `metrics.<task>.<name>.value`), and how to read it in the papers' unit."""
    task: str  # the local task (or group) reporting it
    name: str
    scale: float = 100.0  # times this: the papers' unit (a share to percent; 1.0: already in it)
    kind: str = SHARE


@dataclass(frozen=True)
class Benchmark:
    name: str  # the data folder under a data root; `modbench data --task / --only` take it
    splits: dict[str, tuple[str, ...]]  # prepare: our split file -> the source split names accepted for it
    columns: tuple[str, ...]  # prepare: columns our tasks read (a copy without one is refused)
    fixture: Callable[[Path], list[Path]]  # draws a small copy into its folder (<data root>/<name>)
    keep_row: Callable[[dict], bool] | None = None  # prepare: rows the papers evaluate (None: all)
    llava_max_new_tokens: int = SHORT_ANSWER_TOKENS  # the authors' scripts: greedy, this many new tokens
    # prepare: a copy may hold every split in one, this column naming each row's split (POPE's hub copy)
    split_column: str | None = None
    # prepare --images: joins a separate copy of the images to the questions (questions, images source) -> rows
    join_images: Callable | None = None
    images_hint: str = ""  # prepare: what to do when the copy has no image column
    # one sample's score as the benchmark's metric counts it (1 right, 0 wrong), from lmms-eval's per-sample log
    # (the reproduction's per-question tallies); None: the sample's exact_match, where it has one
    sample_score: Callable[[dict], float] | None = None
    # the tables (suite/tables.py, suite/reproduce.py): the numbers its local tasks report, by a name to choose
    # them by (`metric(benchmark, choice)`); the one the papers print; the papers' CSV columns (results/paper/)
    # of that number and of the share of its prompt tokens the MoD layers skip (in that metric's task); the name
    # a table prints for it
    metrics: dict[str, Metric] = field(default_factory=dict)
    paper_metric: str = ""
    paper_columns: tuple[str, ...] = ()
    skip_columns: tuple[str, ...] = ()
    display: str = ""


_BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    where = f"benchmark {benchmark.name!r}"
    for choice, entry in benchmark.metrics.items():
        if entry.kind not in METRIC_KINDS:
            raise ValueError(f"{where}: metric {choice!r} has kind {entry.kind!r}, not one of {METRIC_KINDS}")
        kinds = {m.kind for b in _BENCHMARKS.values() for m in b.metrics.values() if m.name == entry.name}
        if kinds - {entry.kind}:  # a kind belongs to the metric's name (check.py reads it by name)
            raise ValueError(f"{where}: metric {entry.name!r} is a {entry.kind}, elsewhere a {kinds.pop()}")
    if (benchmark.paper_columns or benchmark.skip_columns) and benchmark.paper_metric not in benchmark.metrics:
        raise ValueError(f"{where}: its paper columns need paper_metric, one of {list(benchmark.metrics)}")
    if benchmark.paper_columns and not benchmark.display:
        raise ValueError(f"{where}: its paper columns need a display name")
    taken = {c for b in _BENCHMARKS.values() for c in (*b.paper_columns, *b.skip_columns)}
    twice = taken & {*benchmark.paper_columns, *benchmark.skip_columns}
    if twice:
        raise ValueError(f"{where}: paper columns {sorted(twice)} are another benchmark's")
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    if name not in _BENCHMARKS:
        close = difflib.get_close_matches(name, list(_BENCHMARKS), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown benchmark {name!r}; {hint}known: {', '.join(sorted(_BENCHMARKS))}")
    return _BENCHMARKS[name]


def list_benchmarks() -> list[Benchmark]:
    return list(_BENCHMARKS.values())


def metric(benchmark: str, choice: str) -> Metric:
    """One of a benchmark's metric choices (`metric("pope", "accuracy")`)."""
    metrics = get_benchmark(benchmark).metrics
    if choice not in metrics:
        raise ValueError(f"benchmark {benchmark!r} has no metric {choice!r}; it has {', '.join(metrics) or 'none'}")
    return metrics[choice]


def paper_columns() -> dict[str, tuple[Benchmark, Metric]]:
    """The papers' accuracy columns (results/paper/*.csv) -> the benchmark and the metric they print."""
    return {column: (b, b.metrics[b.paper_metric]) for b in _BENCHMARKS.values() for column in b.paper_columns}


def skip_columns() -> dict[str, str]:
    """The papers' per-benchmark skip columns -> the local task of the benchmark's paper metric."""
    return {column: b.metrics[b.paper_metric].task for b in _BENCHMARKS.values() for column in b.skip_columns}


def metric_kind(name: str) -> str | None:
    """What a metric of this lmms-eval name is (SHARE, PERCENT_SUM, SCORE), as the registrations say; None: no
    registration names it."""
    for benchmark in _BENCHMARKS.values():
        for entry in benchmark.metrics.values():
            if entry.name == name:
                return entry.kind
    return None


def benchmark_of_task(task: str) -> Benchmark | None:
    """The benchmark a task evaluates: for our local tasks, the folder their YAML's data files are in; for
    lmms-eval's built-in task of the same benchmark (the plugin runs under the lmms-eval CLI too), the longest
    benchmark name its name starts with. None: a task of no registered benchmark."""
    from modbench.tasks.registry import data_files_for

    folders = {path.parent.name for path in data_files_for(task)}
    if len(folders) > 1:
        raise ValueError(f"task {task!r} reads several benchmarks' data: {sorted(folders)}")
    if folders:
        return get_benchmark(folders.pop())
    prefixed = [b for b in _BENCHMARKS.values() if task.startswith(b.name)]
    return max(prefixed, key=lambda b: len(b.name)) if prefixed else None


def sample_score(record: dict) -> float | None:
    """One sample's score as its task's metric counts it (1 right, 0 wrong), from lmms-eval's per-sample log:
    its benchmark's `sample_score`, else its exact match (None: it has none)."""
    benchmark = benchmark_of_task(record["task"])
    if benchmark is not None and benchmark.sample_score is not None:
        return benchmark.sample_score(record)
    value = record.get("exact_match")
    return None if value is None else float(value)


def _one(split: str, *accepted: str) -> dict[str, tuple[str, ...]]:
    return {split: accepted or (split,)}


def _gqa_images(questions, source: Path):
    from modbench.tasks.prepare import join_images_by_id

    return join_images_by_id(questions, source, key="imageId")


register_benchmark(Benchmark(
    "pope", {s: (s,) for s in ("adversarial", "popular", "random")},
    ("question_id", "question", "answer", "image", "category"), fixtures.pope, split_column="category",
    sample_score=lambda record: float(record["pope_accuracy"]["score"]),
    metrics={"f1": Metric("pope_local", "pope_f1_score", kind=SCORE), "accuracy": Metric("pope_local", "pope_accuracy")},
    paper_metric="f1", paper_columns=("pope",), display="POPE"))  # the papers: F1 averaged over the three splits
register_benchmark(Benchmark(
    "mme", _one("test"), ("question_id", "question", "answer", "image", "category"), fixtures.mme,
    sample_score=lambda record: float(record["mme_perception_score"]["score"]),
    metrics={"perception": Metric("mme_local", "mme_perception_score", 1.0, PERCENT_SUM),
             "cognition": Metric("mme_local", "mme_cognition_score", 1.0, PERCENT_SUM)},
    paper_metric="perception", paper_columns=("mme",), display="MME"))
register_benchmark(Benchmark(
    "gqa", _one("testdev", "testdev", "test"), ("id", "imageId", "question", "answer", "image"), fixtures.gqa,
    join_images=_gqa_images, images_hint="GQA: pass --images with the testdev_balanced_images copy",
    metrics={"accuracy": Metric("gqa_local", "exact_match")}, paper_metric="accuracy",
    paper_columns=("gqa_acc", "gqa"), skip_columns=("gqa_skip",), display="GQA"))
register_benchmark(Benchmark(
    "scienceqa_img", _one("test"), ("image", "question", "choices", "answer", "hint"), fixtures.scienceqa_img,
    keep_row=lambda row: row["image"] is not None, llava_max_new_tokens=1,  # a letter
    metrics={"accuracy": Metric("scienceqa_img_local", "exact_match")}, paper_metric="accuracy",
    paper_columns=("sqa_acc", "sqa_img", "sqa"), skip_columns=("sqa_skip",), display="SQA-IMG"))
register_benchmark(Benchmark(
    "textvqa", _one("validation", "validation", "val"), ("question_id", "question", "image", "answers", "ocr_tokens"),
    fixtures.textvqa,
    # the papers: OCR tokens in the prompt, as the LLaVA-style evaluations do; no_ocr: as lmms-eval prompts it
    metrics={"ocr": Metric("textvqa_val_ocr_local", "exact_match"),
             "no_ocr": Metric("textvqa_val_local", "exact_match")},
    paper_metric="ocr", paper_columns=("textvqa_acc", "textvqa"), skip_columns=("textvqa_skip",), display="TextVQA"))
register_benchmark(Benchmark(
    "mmmu", _one("validation", "validation", "dev"), ("id", "question", "options", "answer", "question_type", "image_1"),
    fixtures.mmmu, llava_max_new_tokens=1,  # a letter
    metrics={"accuracy": Metric("mmmu_val_local", "mmmu_acc")}, paper_metric="accuracy",
    paper_columns=("mmmu_acc", "mmmu"), skip_columns=("mmmu_skip",), display="MMMU"))
register_benchmark(Benchmark(
    "seedbench", _one("test"), ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer",
                                "data_type", "image"),
    fixtures.seedbench, keep_row=lambda row: row["data_type"] == "image",  # the papers report SEED^I
    metrics={"image": Metric("seedbench_local", "seed_image")}, paper_metric="image", paper_columns=("seed",),
    display="SEED"))
register_benchmark(Benchmark(
    "vizwiz_vqa", _one("val", "val", "validation"), ("question_id", "question", "image", "answers"), fixtures.vizwiz_vqa,
    metrics={"accuracy": Metric("vizwiz_vqa_val_local", "exact_match")}, display="VizWiz"))
register_benchmark(Benchmark(
    "vqav2", _one("validation", "validation", "val"), ("question_id", "question", "image", "answers"), fixtures.vqav2,
    metrics={"accuracy": Metric("vqav2_val_local", "exact_match")}, paper_metric="accuracy", paper_columns=("vqav2",),
    display="VQAv2"))
register_benchmark(Benchmark(
    "mmbench", _one("dev"), ("index", "question", "hint", "A", "B", "answer", "image"), fixtures.mmbench,
    llava_max_new_tokens=1024,  # as the authors' MMBench script
    # this rotation alone (the circular score needs all four)
    sample_score=lambda record: float(record["mmbench_acc"]["pred"] == record["mmbench_acc"]["answer"]),
    metrics={"circular": Metric("mmbench_en_dev_local", "mmbench_circular_acc"),  # the papers' (all four rotations)
             "rotation": Metric("mmbench_en_dev_local", "mmbench_acc")},
    paper_metric="circular", paper_columns=("mmb",), display="MMB"))
register_benchmark(Benchmark(
    "mmvet", _one("test"), ("question_id", "question", "answer", "image"), fixtures.mmvet,
    llava_max_new_tokens=64,  # open-ended answers, judged by a GPT
    metrics={"gpt": Metric("mmvet_local", "gpt_eval_score", 1.0, SCORE)}, paper_metric="gpt", paper_columns=("mmvet",),
    display="MM-Vet"))
