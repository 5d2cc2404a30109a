"""`modbench data prepare`: convert a user's downloaded copy of a benchmark into the layout the local YAMLs read.

Input: a directory written by `datasets.save_to_disk`, a directory of parquet files, or one parquet file, of
the hub dataset the built-in lmms-eval task uses. Output: `<root>/<benchmark>/<split>.parquet` with the
columns our tasks read (checked: a missing column is an error naming it).
"""

from __future__ import annotations

from pathlib import Path

# benchmark -> (our split files: {our split: accepted source split names}, required columns)
LAYOUTS = {
    "pope": ({"adversarial": ["adversarial"], "popular": ["popular"], "random": ["random"]},
             ["question_id", "question", "answer", "image", "category"]),
    "mme": ({"test": ["test"]}, ["question_id", "question", "answer", "image", "category"]),
    "gqa": ({"testdev": ["testdev", "test"]}, ["id", "imageId", "question", "answer", "image"]),
    "scienceqa_img": ({"test": ["test"]}, ["image", "question", "choices", "answer", "hint"]),
    "textvqa": ({"validation": ["validation", "val"]}, ["question_id", "question", "image", "answers", "ocr_tokens"]),
    "mmmu": ({"validation": ["validation", "dev"]}, ["id", "question", "options", "answer", "question_type", "image_1"]),
    "seedbench": ({"test": ["test"]}, ["question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d",
                                       "answer", "data_type", "image"]),
    "vizwiz_vqa": ({"val": ["val", "validation"]}, ["question_id", "question", "image", "answers"]),
    "vqav2": ({"validation": ["validation", "val"]}, ["question_id", "question", "image", "answers"]),
    "mmbench": ({"dev": ["dev"]}, ["index", "question", "hint", "A", "B", "answer", "image"]),
    "mmvet": ({"test": ["test"]}, ["question_id", "question", "answer", "image"]),
}


def _load(source: Path):
    import datasets

    if source.is_dir() and (source / "dataset_dict.json").exists() or (source / "state.json").exists():
        loaded = datasets.load_from_disk(str(source))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"test": loaded})
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"{source}: no dataset (save_to_disk directory or parquet files) found")
    by_split: dict[str, list[str]] = {}
    for f in files:  # hub layout <split>-00000-of-00001.parquet, or ours <split>.parquet
        split = f.stem.split("-")[0]
        by_split.setdefault(split, []).append(str(f))
    return datasets.load_dataset("parquet", data_files=by_split)


def prepare(benchmark: str, source: str | Path, root: str | Path, images: str | Path | None = None) -> list[Path]:
    if benchmark not in LAYOUTS:
        raise ValueError(f"--task: unknown benchmark {benchmark!r}; known: {sorted(LAYOUTS)}")
    splits, columns = LAYOUTS[benchmark]
    data = _load(Path(source))
    if benchmark == "pope" and not any(s in data for s in splits) and "category" in data[next(iter(data))].column_names:
        whole = data[next(iter(data))]
        data = {s: whole.filter(lambda row, s=s: row["category"] == s) for s in splits}
    if benchmark == "gqa" and images is not None:
        data = {k: _join_gqa_images(v, Path(images)) for k, v in data.items()}
    written = []
    for ours, accepted in splits.items():
        name = next((s for s in accepted if s in data), None)
        if name is None:
            raise ValueError(f"{source}: none of the splits {accepted} (have {sorted(data)})")
        split = data[name]
        missing = [c for c in columns if c not in split.column_names]
        if missing:
            raise ValueError(f"{source} [{name}]: missing column(s) {missing}"
                             + (" (GQA: pass --images with the testdev_balanced_images copy)" if "image" in missing
                                and benchmark == "gqa" else ""))
        if benchmark == "scienceqa_img":
            split = split.filter(lambda row: row["image"] is not None)
        if benchmark == "seedbench":  # the papers report SEED^I: image questions only
            split = split.filter(lambda row: row["data_type"] == "image")
        out = Path(root) / benchmark / f"{ours}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        from tasks.fixtures import write_parquet

        write_parquet(split, out)
        written.append(out)
    return written


def _join_gqa_images(questions, images_source: Path):
    images = _load(images_source)
    table = images[next(iter(images))]
    by_id = {row_id: i for i, row_id in enumerate(table["id"])}
    missing = sorted({q for q in questions["imageId"] if q not in by_id})
    if missing:
        raise ValueError(f"{images_source}: no image for imageId(s) {missing[:5]}")
    return questions.map(lambda row: {"image": table[by_id[row["imageId"]]]["image"]})
