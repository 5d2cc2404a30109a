"""`modbench data prepare`: convert a user's downloaded copy of a benchmark into the layout the local YAMLs read.

Input: a directory written by `datasets.save_to_disk`, a directory of parquet files, or one parquet file, of
the hub dataset the built-in lmms-eval task uses. Output: `<root>/<benchmark>/<split>.parquet` with the
columns our tasks read (checked: a missing column is an error naming the columns expected and found), and every
image decodable (a corrupt one is an error naming its split, row and id).
"""

from __future__ import annotations

from pathlib import Path


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
    from modbench.tasks.benchmarks import get_benchmark, list_benchmarks

    registered = get_benchmark(benchmark)
    splits, columns = registered.splits, list(registered.columns)
    if images is not None and registered.join_images is None:  # before reading anything
        raise ValueError(f"--images: {benchmark} has its images in its own copy; a separate image copy is "
                         "joined only for " + ", ".join(b.name for b in list_benchmarks() if b.join_images))
    data = _load(Path(source))
    by = registered.split_column
    if by and not any(s in data for s in splits) and by in data[next(iter(data))].column_names:
        whole = data[next(iter(data))]
        data = {s: whole.filter(lambda value, s=s: value == s, input_columns=by) for s in splits}
    if images is not None:
        data = {k: registered.join_images(v, Path(images)) for k, v in data.items()}
    written = []
    for ours, accepted in splits.items():
        name = next((s for s in accepted if s in data), None)
        if name is None:  # most often another benchmark's copy: say what was expected and what is there
            found = "; ".join(f"split {s!r} with columns {data[s].column_names}" for s in sorted(data))
            raise ValueError(f"{source}: not a {benchmark} copy: expected split {' or '.join(map(repr, accepted))}"
                             + (f" (or one split with a {by!r} column)" if by else "")
                             + f" with columns {columns}; found {found}")
        split = data[name]
        missing = [c for c in columns if c not in split.column_names]
        if missing:
            raise ValueError(f"{source} [{name}]: missing column(s) {missing}: expected columns {columns}, found "
                             f"{split.column_names}"
                             + (f" ({registered.images_hint})" if "image" in missing and registered.images_hint
                                else ""))
        _check_images(split, f"{source} [{name}]")
        if registered.keep_row is not None:
            split = split.filter(registered.keep_row)
        out = Path(root) / benchmark / f"{ours}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        from modbench.tasks.fixtures import write_parquet

        write_parquet(split, out)
        written.append(out)
    return written


def _check_images(split, where: str) -> None:
    """Every image decodes; else an error naming the row and its id (datasets' own error names neither)."""
    import io

    import datasets
    from PIL import Image

    def is_image(feature) -> bool:  # an Image, or a list of them (Sequence / List)
        return isinstance(feature, datasets.Image) or isinstance(getattr(feature, "feature", None), datasets.Image)

    columns = [c for c, f in split.features.items() if is_image(f)]
    if not columns:
        return
    raw = split.select_columns(columns + [c for c in ID_COLUMNS if c in split.column_names][:1])
    id_column = next((c for c in ID_COLUMNS if c in raw.column_names), None)
    for column in columns:  # undecoded: {"bytes", "path"} per image
        feature = raw.features[column]
        raw = raw.cast_column(column, datasets.Image(decode=False) if isinstance(feature, datasets.Image)
                              else datasets.List(datasets.Image(decode=False)))
    for row_number, row in enumerate(raw):
        for column in columns:
            values = row[column] if isinstance(row[column], list) else [row[column]]
            for value in values:
                if value is None:
                    continue
                try:
                    data = value["bytes"] if value["bytes"] is not None else Path(value["path"]).read_bytes()
                    image = Image.open(io.BytesIO(data))
                    image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale; still reads every byte
                    image.load()
                except Exception as exc:
                    row_id = f" ({id_column}={row[id_column]!r})" if id_column else ""
                    raise ValueError(f"{where} row {row_number}{row_id}: column {column!r} holds a corrupt image "
                                     f"({type(exc).__name__}: {exc})") from None


ID_COLUMNS = ("question_id", "id", "index", "pid")


def join_images_by_id(questions, images_source: Path, key: str):
    """A benchmark whose images come as a copy of their own (GQA's testdev_balanced_images): each question's
    image is the row whose `id` is the question's `key`."""
    images = _load(images_source)
    table = images[next(iter(images))]
    _check_images(table, f"{images_source} [{next(iter(images))}]")  # before the join decodes them
    by_id = {row_id: i for i, row_id in enumerate(table["id"])}
    missing = sorted({q for q in questions[key] if q not in by_id})
    if missing:
        raise ValueError(f"{images_source}: no image for {key}(s) {missing[:5]}")
    return questions.map(lambda row: {"image": table[by_id[row[key]]]["image"]})
