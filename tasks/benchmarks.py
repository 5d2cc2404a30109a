"""The benchmarks, one registration each: what `modbench data prepare` accepts, how fixtures are drawn, and the
γ-MoD / LLaVA-HR evaluation scripts' answer length (the plugin's `llava` protocol).

Which local task reads which benchmark is not listed here: it is the folder of the task YAML's data files
(`data/<benchmark>/<split>.parquet`, see tasks/registry.py), so a task cannot disagree with its benchmark.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modbench.tasks import fixtures

# The llava protocol's answer length when a benchmark asks for a short answer (a word or a number).
SHORT_ANSWER_TOKENS = 6


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


_BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
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
    sample_score=lambda record: float(record["pope_accuracy"]["score"])))
register_benchmark(Benchmark(
    "mme", _one("test"), ("question_id", "question", "answer", "image", "category"), fixtures.mme,
    sample_score=lambda record: float(record["mme_perception_score"]["score"])))
register_benchmark(Benchmark(
    "gqa", _one("testdev", "testdev", "test"), ("id", "imageId", "question", "answer", "image"), fixtures.gqa,
    join_images=_gqa_images, images_hint="GQA: pass --images with the testdev_balanced_images copy"))
register_benchmark(Benchmark(
    "scienceqa_img", _one("test"), ("image", "question", "choices", "answer", "hint"), fixtures.scienceqa_img,
    keep_row=lambda row: row["image"] is not None, llava_max_new_tokens=1))  # a letter
register_benchmark(Benchmark(
    "textvqa", _one("validation", "validation", "val"), ("question_id", "question", "image", "answers", "ocr_tokens"),
    fixtures.textvqa))
register_benchmark(Benchmark(
    "mmmu", _one("validation", "validation", "dev"), ("id", "question", "options", "answer", "question_type", "image_1"),
    fixtures.mmmu, llava_max_new_tokens=1))  # a letter
register_benchmark(Benchmark(
    "seedbench", _one("test"), ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer",
                                "data_type", "image"),
    fixtures.seedbench, keep_row=lambda row: row["data_type"] == "image"))  # the papers report SEED^I
register_benchmark(Benchmark(
    "vizwiz_vqa", _one("val", "val", "validation"), ("question_id", "question", "image", "answers"), fixtures.vizwiz_vqa))
register_benchmark(Benchmark(
    "vqav2", _one("validation", "validation", "val"), ("question_id", "question", "image", "answers"), fixtures.vqav2))
register_benchmark(Benchmark(
    "mmbench", _one("dev"), ("index", "question", "hint", "A", "B", "answer", "image"), fixtures.mmbench,
    llava_max_new_tokens=1024,  # as the authors' MMBench script
    # this rotation alone (the circular score needs all four)
    sample_score=lambda record: float(record["mmbench_acc"]["pred"] == record["mmbench_acc"]["answer"])))
register_benchmark(Benchmark(
    "mmvet", _one("test"), ("question_id", "question", "answer", "image"), fixtures.mmvet,
    llava_max_new_tokens=64))  # open-ended answers, judged by a GPT
