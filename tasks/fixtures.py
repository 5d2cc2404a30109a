"""Small fixture datasets in each benchmark's real column schema, with real images drawn by PIL.

Every image shows coloured shapes (or a word) and every answer is true of its image, so a model that reads
images could score on them. Written as parquet with the datasets Image feature, as the hub copies store them.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("STOP", "OPEN", "EXIT", "CAFE", "BANK", "TAXI", "HOTEL", "PARK")


def draw_shapes(items: list[tuple[str, str]], size=(96, 72), seed=0) -> Image.Image:
    """items: (shape, colour) drawn left to right on a light background."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, (245, 245, 240))
    draw = ImageDraw.Draw(image)
    width = size[0] // max(len(items), 1)
    for i, (shape, colour) in enumerate(items):
        x0, y0 = i * width + 4 + rng.randint(0, 3), 8 + rng.randint(0, 6)
        x1, y1 = x0 + width - 10, size[1] - 8 - rng.randint(0, 6)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image


def draw_word(word: str, size=(96, 48)) -> Image.Image:
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, size[0] - 3, size[1] - 3), outline=(20, 20, 20))
    draw.text((10, size[1] // 2 - 6), word, fill=(10, 10, 10))
    return image


def sample_prompts() -> list[tuple[str, Image.Image]]:
    """Three small deterministic (question, image) pairs, shapes and colours drawn by PIL: the inputs of
    `modbench smoke`, `modbench arank` on a variant, and `modbench latency`'s image."""
    samples = []
    for i, (colour, shape, question) in enumerate([
        ((220, 40, 40), "circle", "Is there a red circle in the image?"),
        ((40, 60, 220), "square", "What colour is the square?"),
        ((40, 170, 60), "triangle", "What shape is shown?"),
    ]):
        image = Image.new("RGB", (64 + 16 * i, 48 + 8 * i), (245, 245, 245))
        pen = ImageDraw.Draw(image)
        w, h = image.size
        if shape == "circle":
            pen.ellipse((10, 8, w - 10, h - 8), fill=colour)
        elif shape == "square":
            pen.rectangle((12, 8, w - 12, h - 8), fill=colour)
        else:
            pen.polygon([(w // 2, 6), (8, h - 6), (w - 8, h - 6)], fill=colour)
        samples.append((question, image))
    return samples


def _scene(rng: random.Random, n: int | None = None) -> list[tuple[str, str]]:
    n = n or rng.randint(1, 3)
    return [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(n)]


def _write(rows: list[dict], path: Path, image_columns=("image",), image_list_columns=()) -> Path:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    data = {key: [row[key] for row in rows] for key in rows[0]}
    dataset = datasets.Dataset.from_dict(data)
    for column in image_columns:
        dataset = dataset.cast_column(column, datasets.Image())
    for column in image_list_columns:
        dataset = dataset.cast_column(column, datasets.Sequence(datasets.Image()))
    write_parquet(dataset, path)
    return path


def write_parquet(dataset, path: Path) -> Path:
    """A datasets.Dataset as parquet, with its features in the schema metadata (as `Dataset.to_parquet` writes
    them, without its progress bar), to a temporary name renamed into place."""
    import os

    import pyarrow.parquet as pq

    if getattr(dataset, "_indices", None) is not None:  # a filtered view: write the rows it keeps
        dataset = dataset.flatten_indices()
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(dataset.data.table, str(tmp))
    os.replace(tmp, path)
    return path


def pope(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    paths = []
    for s, split in enumerate(("adversarial", "popular", "random")):
        rng = random.Random(seed * 100 + s)
        rows = []
        for i in range(n):
            scene = _scene(rng)
            present = {shape for shape, _ in scene}
            asked = rng.choice(SHAPES)
            rows.append({
                "question_id": f"{split}-{i}", "question": f"Is there a {asked} in the image?",
                "answer": "yes" if asked in present else "no", "image_source": f"fixture_{split}_{i}",
                "image": draw_shapes(scene, seed=i), "category": split,
            })
        paths.append(_write(rows, folder / f"{split}.parquet"))
    return paths


MME_CATEGORIES = ("existence", "count", "color", "position", "commonsense_reasoning", "numerical_calculation")


def mme(folder: Path, images_per_category: int = 2, seed: int = 0) -> list[Path]:
    """MME: two questions per image (one 'Yes', one 'No'), sharing the image's question_id (for acc+)."""
    rng = random.Random(seed)
    rows = []
    for category in MME_CATEGORIES:
        for i in range(images_per_category):
            scene = _scene(rng, 2)
            image = draw_shapes(scene, seed=i)
            (shape_a, colour_a), (shape_b, _) = scene
            other_colour = next(c for c in COLOURS if c != colour_a)
            count = sum(1 for s, _ in scene if s == shape_a)
            questions = {
                "existence": (f"Is there a {shape_a} in this image?",
                              f"Is there a {next(s for s in SHAPES if s not in (shape_a, shape_b))} in this image?"),
                "count": (f"Are there {count} {shape_a}s in this image?", f"Are there {count + 3} {shape_a}s in this image?"),
                "color": (f"Is the {shape_a} {colour_a}?", f"Is the {shape_a} {other_colour}?"),
                "position": (f"Is the {shape_a} on the left of the {shape_b}?",
                             f"Is the {shape_a} on the right of the {shape_b}?"),
                "commonsense_reasoning": ("Is this a drawing of shapes?", "Is this a photo of a cat?"),
                "numerical_calculation": ("Is the number of shapes plus one equal to 3?",
                                          "Is the number of shapes plus one equal to 7?"),
            }[category]
            qid = f"{category}/{i}.png"
            for question, answer in zip(questions, ("Yes", "No")):
                rows.append({"question_id": qid, "image": image, "answer": answer, "category": category,
                             "question": f"{question} Please answer yes or no."})
    return [_write(rows, folder / "test.parquet")]


def gqa(folder: Path, n: int = 16, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = _scene(rng, 1)
        shape, colour = scene[0]
        kind = i % 2
        question = f"What color is the {shape}?" if kind == 0 else "What shape is shown?"
        answer = colour if kind == 0 else shape
        rows.append({"id": f"q{i}", "imageId": f"img{i}", "question": question, "answer": answer,
                     "fullAnswer": f"The {shape} is {colour}.", "image": draw_shapes(scene, seed=i)})
    return [_write(rows, folder / "testdev.parquet")]


def scienceqa_img(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = _scene(rng, 1)
        shape, colour = scene[0]
        choices = list(SHAPES)
        rng.shuffle(choices)
        rows.append({
            "image": draw_shapes(scene, seed=i), "question": "Which shape is shown in the picture?",
            "choices": choices, "answer": choices.index(shape), "hint": f"The shape is {colour}.",
            "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "geometry",
            "category": "Shapes", "skill": "Identify shapes", "lecture": "", "solution": f"It is a {shape}.",
        })
    return [_write(rows, folder / "test.parquet")]


def textvqa(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = rng.choice(WORDS)
        rows.append({
            "image_id": f"img{i}", "question_id": i, "question": "what word is written on the sign?",
            "question_tokens": ["what", "word", "is", "written", "on", "the", "sign"],
            "image": draw_word(word), "image_width": 96, "image_height": 48, "flickr_original_url": "",
            "flickr_300k_url": "", "answers": [word.lower()] * 10, "image_classes": ["sign"], "set_name": "val",
            "ocr_tokens": [word.lower()],
        })
    return [_write(rows, folder / "validation.parquet")]


def mmmu(folder: Path, n: int = 8, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    subjects = ("Art", "Math", "Physics", "Geography")
    for i in range(n):
        shape, colour = _scene(rng, 1)[0]
        options = list(SHAPES)
        rng.shuffle(options)
        row = {
            "id": f"validation_{subjects[i % len(subjects)]}_{i + 1}",
            "question": "<image 1> Which shape is drawn in the figure?", "options": str(options),
            "explanation": "", "image_1": draw_shapes([(shape, colour)], seed=i),
            "img_type": "['Diagrams']", "answer": "ABC"[options.index(shape)], "topic_difficulty": "Easy",
            "question_type": "multiple-choice", "subfield": "Shapes",
        }
        row.update({f"image_{k}": None for k in range(2, 8)})
        rows.append(row)
    return [_write(rows, folder / "validation.parquet", image_columns=[f"image_{k}" for k in range(1, 8)])]


def seedbench(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour = _scene(rng, 1)[0]
        colours = [colour] + rng.sample([c for c in COLOURS if c != colour], 3)
        rng.shuffle(colours)
        rows.append({
            "answer": "ABCD"[colours.index(colour)], "choice_a": colours[0], "choice_b": colours[1],
            "choice_c": colours[2], "choice_d": colours[3], "data_id": f"img{i}", "data_type": "image",
            "question": f"What is the colour of the {shape}?", "question_id": str(i), "question_type_id": 1,
            "image": [draw_shapes([(shape, colour)], seed=i)], "segment": None,
        })
    return [_write(rows, folder / "test.parquet", image_columns=(), image_list_columns=["image"])]


def vizwiz_vqa(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 4 == 3:  # VizWiz has unanswerable questions: a blank image
            image, answers, category = Image.new("RGB", (96, 48), (120, 120, 120)), ["unanswerable"] * 10, "unanswerable"
        else:
            word = rng.choice(WORDS)
            image, answers, category = draw_word(word), [word.lower()] * 10, "other"
        rows.append({"question_id": f"VizWiz_val_{i:08d}.jpg", "image": image, "question": "What does this say?",
                     "answers": answers, "category": category})
    return [_write(rows, folder / "val.parquet")]


def vqav2(folder: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = _scene(rng)
        answer = str(len(scene)) if i % 2 else scene[0][1]
        question = "How many shapes are there?" if i % 2 else f"What color is the {scene[0][0]} on the left?"
        rows.append({
            "question_type": "how many" if i % 2 else "what color is the", "multiple_choice_answer": answer,
            "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
            "image_id": i, "answer_type": "number" if i % 2 else "other", "question_id": 1000 + i,
            "question": question, "image": draw_shapes(scene, seed=i),
        })
    return [_write(rows, folder / "validation.parquet")]


def mmbench(folder: Path, n: int = 6, seed: int = 0) -> list[Path]:
    """Each base question appears with its options rotated (MMBench's circular copies: index + k * 1e6)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour = _scene(rng, 1)[0]
        options = [shape] + [s for s in SHAPES if s != shape] + ["star"]
        image = draw_shapes([(shape, colour)], seed=i)
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            rows.append({
                "index": i + k * 1_000_000, "question": "Which shape is in the image?", "hint": None,
                "A": rotated[0], "B": rotated[1], "C": rotated[2], "D": rotated[3],
                "answer": "ABCD"[rotated.index(shape)], "category": "object_localization", "image": image,
                "source": "fixture", "l2-category": "finegrained_perception (instance-level)", "comment": None,
                "split": "dev",
            })
    return [_write(rows, folder / "dev.parquet")]


def mmvet(folder: Path, n: int = 8, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shape, colour = _scene(rng, 1)[0]
        rows.append({"question_id": f"v1_{i}", "image": draw_shapes([(shape, colour)], seed=i),
                     "question": f"What colour is the {shape}?", "answer": f"{colour}", "capability": "rec",
                     "image_source": f"fixture_{i}"})
    return [_write(rows, folder / "test.parquet")]


def write_all(root: str | Path, only: list[str] | None = None) -> dict[str, list[str]]:
    """Every registered benchmark's fixture (tasks/benchmarks.py), or those named in `only`."""
    from modbench.tasks.benchmarks import get_benchmark, list_benchmarks

    root = Path(root)
    chosen = [get_benchmark(name) for name in only] if only else list_benchmarks()
    return {b.name: [str(p) for p in b.fixture(root / b.name)] for b in chosen}
