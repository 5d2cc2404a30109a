"""A seeded corpus of drawn scenes for the CPU-scale reproduction (`modbench reproduce`).

Each scene is a light, faintly textured background with one to three shapes (circle, square, triangle; six
colours; small or big; left or right) and, in some scenes, a sign with a printed word. Most of the image
carries no answer, as in natural images, so image tokens are genuinely redundant. From scenes come:
- training data in LLaVA's instruction JSON (several question-answer turns per image, in the prompt formats
  of the evaluation tasks), read by `modbench train`;
- held-out evaluation sets in the real column schemas of the local benchmarks, evaluated by the same lmms-eval
  tasks, prompts and metrics as the real benchmarks, from a data root of their own: POPE (random / popular /
  adversarial), GQA-style short answers, ScienceQA-IMG-style multiple choice, TextVQA-style reading, MME-style
  yes/no pairs and MMBench-style options (circular copies);
- per-patch labels of the training images (what covers each patch), on which the reproduction pretrains its
  vision tower (suite/vision_pretrain.py).
Training and evaluation scenes are drawn from separate random streams and checked never to coincide.
Everything is generated from a seed in seconds; nothing is committed as a binary.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 215), "yellow": (230, 195, 30),
           "purple": (140, 60, 180), "orange": (240, 125, 30)}
SIZES = {"small": 0.26, "big": 0.38}  # object side as a share of the image side: 3 to 4 patches
WORDS = ("STOP", "OPEN", "EXIT", "CAFE", "BANK", "TAXI", "PARK", "SHOP")
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
NUMBERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a share of the width
    y: float

    @property
    def side(self) -> str:
        return "left" if self.x < 0.5 else "right"

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    word: str | None
    sign_at: tuple[float, float] | None
    background: tuple[int, int, int]
    texture: int  # seed of the background speckles

    def key(self) -> str:
        """What a question can ask about; two scenes with one key are the same scene to the model."""
        return json.dumps([sorted((t.shape, t.colour, t.size, t.side) for t in self.things), self.word])

    def count(self, shape: str | None = None) -> int:
        return sum(1 for t in self.things if shape is None or t.shape == shape)


def sample_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2, 2, 3))
    word = rng.choice(WORDS) if rng.random() < 0.35 else None
    # A 3 x 3 grid of cells, one object per cell; a sign takes the middle row, so that it hides no object.
    free = [(cx, cy) for cx in range(3) for cy in range(3) if (cy != 1 if word else (cx, cy) != (1, 1))]
    cells = rng.sample(free, n)
    shapes = rng.sample(SHAPES, n) if rng.random() < 0.7 else [rng.choice(SHAPES) for _ in range(n)]
    colours = rng.sample(list(COLOURS), n)
    things = tuple(Thing(shape, colour, rng.choice(tuple(SIZES)), (cx + 0.5 + rng.uniform(-0.12, 0.12)) / 3,
                         (cy + 0.5 + rng.uniform(-0.12, 0.12)) / 3)
                   for shape, colour, (cx, cy) in zip(shapes, colours, cells))
    sign = (0.5, 0.5) if word else None
    shade = rng.randint(225, 250)
    background = (shade, shade - rng.randint(0, 12), shade - rng.randint(0, 18))
    return Scene(things, word, sign, background, rng.randrange(1 << 30))


def draw(scene: Scene, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), scene.background)
    pen = ImageDraw.Draw(image)
    speckles = random.Random(scene.texture)
    for _ in range(size * size // 40):  # faint texture: background tokens are not all identical
        x, y = speckles.randrange(size), speckles.randrange(size)
        tone = tuple(max(0, c - speckles.randint(8, 30)) for c in scene.background)
        pen.point((x, y), fill=tone)
    _paint(pen, scene, size, thing_fill=lambda t: COLOURS[t.colour], sign_fill=(255, 255, 255), text=True)
    return image


# What covers each patch: the labels a vision tower is pretrained on (`suite.vision_pretrain`, the scale's
# stand-in for CLIP's pretraining), one class per colour-shape pair and per sign word.
PATCH_CLASSES = ("background", *(f"{c} {s}" for c in COLOURS for s in SHAPES), *(f"sign {w}" for w in WORDS))
PATCH_FACTORS = {"colour": ("none", *COLOURS), "shape": ("none", *SHAPES)}


def patch_factor_labels(factor: str) -> list[int]:
    """For each PATCH_CLASSES index, the index in PATCH_FACTORS[factor] of its colour or shape ("none": the
    background and the signs): the targets that make a tower name colour and shape apart."""
    names = PATCH_FACTORS[factor]
    part = {"colour": 0, "shape": 1}[factor]
    return [names.index(c.split()[part]) if c.split()[-1] in SHAPES else 0 for c in PATCH_CLASSES]


def patch_labels(scene: Scene, size: int, patch: int) -> list[int]:
    """The PATCH_CLASSES index of what covers each patch's centre, row-major over the (size // patch)^2 grid of
    the image `draw(scene, size)` draws (the same shapes, painted with class indices)."""
    image = Image.new("L", (size, size), 0)
    index = {name: i for i, name in enumerate(PATCH_CLASSES)}
    _paint(ImageDraw.Draw(image), scene, size, thing_fill=lambda t: index[t.name],
           sign_fill=index[f"sign {scene.word}"] if scene.word else 0, text=False)
    centre = patch // 2
    return [image.getpixel((x, y)) for y in range(centre, size, patch) for x in range(centre, size, patch)]


def _paint(pen: ImageDraw.ImageDraw, scene: Scene, size: int, thing_fill, sign_fill, text: bool) -> None:
    for thing in scene.things:
        half = SIZES[thing.size] * size / 2
        cx, cy = thing.x * size, thing.y * size
        box = (cx - half, cy - half, cx + half, cy + half)
        fill = thing_fill(thing)
        if thing.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif thing.shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    if scene.word:
        from PIL import ImageFont

        font = ImageFont.load_default(size=max(6, round(0.15 * size)))  # Pillow's bundled font: no system fonts
        left, top, right, bottom = pen.textbbox((0, 0), scene.word, font=font)
        width, height = right - left + 0.08 * size, bottom - top + 0.08 * size
        cx = min(max(scene.sign_at[0] * size, width / 2), size - width / 2)  # the whole sign inside the image
        cy = min(max(scene.sign_at[1] * size, height / 2), size - height / 2)
        pen.rectangle((cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2), fill=sign_fill,
                      outline=(30, 30, 30) if text else sign_fill)
        if text:
            pen.text((cx - (right + left) / 2, cy - (bottom + top) / 2), scene.word, fill=(0, 0, 0), font=font)


# ---------------------------------------------------------------------------------------------------------
# questions: (prompt text as the local task prompts it, answer, number of possible answers)


def q_exists(scene: Scene, rng: random.Random, negative: str = "random", popular: list[str] | None = None):
    """POPE: 'Is there a {colour} {shape} in the image?'; the negative object random, popular (the most frequent
    objects of the training data) or adversarial (a present shape in another colour, or a present colour on
    another shape)."""
    present = {t.name for t in scene.things}
    if rng.random() < 0.5:
        return rng.choice(sorted(present)), "yes"
    return absent_object(scene, rng, negative, popular), "no"


def absent_object(scene: Scene, rng: random.Random, negative: str = "random", popular: list[str] | None = None):
    """An object not in the scene, drawn as POPE draws its negatives (q_exists)."""
    present = {t.name for t in scene.things}
    if negative == "adversarial":
        thing = rng.choice(scene.things)
        options = [f"{c} {thing.shape}" for c in COLOURS] + [f"{thing.colour} {s}" for s in SHAPES]
    elif negative == "popular" and popular:
        options = popular
    else:
        options = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    options = [o for o in options if o not in present]
    return rng.choice(options)


def short_question(scene: Scene, rng: random.Random) -> tuple[str, str, int]:
    """GQA-style: colour, shape, side, count."""
    unique = [t for t in scene.things if scene.count(t.shape) == 1]
    kinds = ["count"] + (["colour", "side"] if unique else []) + ["shape"]
    kind = rng.choice(kinds)
    if kind == "colour":
        t = rng.choice(unique)
        return f"What color is the {t.shape}?", t.colour, len(COLOURS)
    if kind == "side":
        t = rng.choice(unique)
        return f"Is the {t.shape} on the left or right?", t.side, 2
    if kind == "shape":
        t = rng.choice(scene.things)
        return f"What shape is the {t.colour} object?", t.shape, len(SHAPES)
    return "How many shapes are there?", NUMBERS[scene.count()], 3


def choice_question(scene: Scene, rng: random.Random) -> tuple[str, list[str], int]:
    """ScienceQA / MMBench style: which colour is the {shape} (a unique shape), or which shape is {colour}."""
    t = rng.choice(scene.things)
    if scene.count(t.shape) == 1 and rng.random() < 0.5:
        options, answer = [t.colour] + rng.sample([c for c in COLOURS if c != t.colour], 3), t.colour
        question = f"Which color is the {t.shape}?"
    else:
        options, answer = list(SHAPES) + ["star"], t.shape
        question = f"Which shape is {t.colour}?"
    rng.shuffle(options)
    return question, options, options.index(answer)


def lookup_question(rng: random.Random) -> tuple[str, str]:
    """A text-only drill in the multiple-choice format: "Which option is circle?" over the options a
    choice_question offers (four colours, or the shapes and "star"), answered with the named option's letter,
    every letter equally often. It asks nothing about the image: it teaches the step from a known answer to its
    letter, which LLaVA's pretrained Vicuna brings with it and a model trained from scratch lacks."""
    options = rng.sample(list(COLOURS), 4) if rng.random() < 0.5 else list(SHAPES) + ["star"]
    rng.shuffle(options)
    index = rng.randrange(4)
    return f"Which option is {options[index]}?{letters(options)}{LETTER}", "ABCD"[index]


# What each held-out question asks the model to see. Read together, the kinds tell which perception a model has
# learnt: counting needs only "something is there", naming a shape needs its outline. Open answers' chance levels.
SKILL_CHANCE = {"count": 1 / 3, "colour of a named shape": 1 / len(COLOURS), "side of a named shape": 1 / 2,
                "shape of a named colour": 1 / len(SHAPES), "exists (colour + shape)": 1 / 2,
                "reading": 1 / len(WORDS)}


def question_kind(task: str, question: str) -> str | None:
    """'<skill>, <answer format>' of a held-out question of this corpus, from its task and text (None: not one of
    this corpus's questions). Formats: open (GQA, TextVQA), yes/no (POPE, MME), letter (ScienceQA, MMBench)."""
    form = "yes/no" if task.startswith(("pope", "mme")) else "letter" if task.startswith(("scienceqa", "mmbench")) \
        else "open"
    words = question.split()
    if question.startswith(("How many", "Are there")):
        skill = "count"
    elif question.startswith(("What color is the", "Which color is the")) or (
            form == "yes/no" and words[:2] == ["Is", "the"] and len(words) > 3 and words[3].rstrip("?") in COLOURS):
        skill = "colour of a named shape"
    elif question.startswith(("What shape is", "Which shape is")):
        skill = "shape of a named colour"
    elif words[:2] == ["Is", "the"] and (" left" in question or " right" in question):
        skill = "side of a named shape"
    elif question.startswith("Is there a"):
        skill = "exists (colour + shape)"
    elif question.startswith("What word"):
        skill = "reading"
    else:
        return None
    return f"{skill}, {form}"


def kind_chance(kind: str) -> float:
    """A uniform guess's accuracy on a question kind: 1/2 for yes/no, 1/4 for the four letters, else the skill's."""
    skill, form = kind.rsplit(", ", 1)
    return {"yes/no": 0.5, "letter": 0.25}.get(form, SKILL_CHANCE[skill])


def letters(options: list[str]) -> str:
    return "".join(f"\n{'ABCD'[i]}. {o}" for i, o in enumerate(options))


def mme_pair(scene: Scene, rng: random.Random) -> tuple[str, tuple[str, str]]:
    """MME: one 'Yes' and one 'No' question about one image, in one of the four perception categories."""
    t = rng.choice(scene.things)
    category = rng.choice(("existence", "count", "color", "position"))
    absent = rng.choice([f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in {x.name for x in scene.things}])
    other_colour = rng.choice([c for c in COLOURS if c != t.colour])
    n = scene.count()
    questions = {
        "existence": (f"Is there a {t.name} in this image?", f"Is there a {absent} in this image?"),
        "count": (f"Are there {NUMBERS[n]} shapes in this image?",
                  f"Are there {NUMBERS[rng.choice([k for k in (1, 2, 3) if k != n])]} shapes in this image?"),
        "color": (f"Is the {t.shape} {t.colour}?" if scene.count(t.shape) == 1 else f"Is there a {t.name}?",
                  f"Is the {t.shape} {other_colour}?" if scene.count(t.shape) == 1 else f"Is there a {absent}?"),
        "position": (f"Is the {t.name} on the {t.side}?",
                     f"Is the {t.name} on the {'right' if t.side == 'left' else 'left'}?"),
    }[category]
    return category, questions


def describe(scene: Scene) -> str:
    """A dense caption (LLaVA's stage-1 kind of supervision): every object, its size, colour, shape and place,
    and the sign's word; many answer tokens per image, all grounded in it."""
    parts = []
    for t in sorted(scene.things, key=lambda t: (t.y, t.x)):
        row = "top" if t.y < 1 / 3 else "bottom" if t.y > 2 / 3 else "middle"
        parts.append(f"{t.size} {t.colour} {t.shape} {row} {t.side}")
    if scene.word:
        parts.append(f"sign {scene.word.lower()}")
    return ", ".join(parts)


YES_NO_ORDERS = ("drawn", "first", "after_first", "half_first")


def training_turns(scene: Scene, rng: random.Random, turns: int, exists_weight: int = 1,
                   caption: bool = True, yes_no_order: str = "drawn",
                   exists_pairs: bool = False, choice_weight: int = 1,
                   option_lookup: float = 0.0) -> list[tuple[str, str]]:
    """Question-answer turns about one scene, in the evaluation tasks' prompt formats (follow-up turns without
    the answer-format instruction, as LLaVA's multi-turn data has it: the first turn sets the format). No question
    is asked twice about one image: a repeated question's answer could be copied from the earlier turn instead of
    read off the image. exists_weight: how many shares of the turns ask existence ("Is there a red circle?"),
    against one share of MME-style yes/no, two of short answers and two of reading; choice_weight: the shares of
    multiple choice (answered with the option's letter).
    caption: end with a dense caption of the scene (its many tokens weigh in the per-token loss).
    yes_no_order: where the yes/no questions go among the drawn turns (the same questions, reordered): "drawn"
    (as drawn), "first" (before every other turn), "after_first" (the first turn as drawn, then the yes/no
    questions, then the rest), "half_first" ("first" in half the conversations, by one more draw of `rng`,
    else "drawn"). An earlier answer can give a yes/no answer away (after "What colour is the
    circle? Red", "Is there a red circle?" needs no look at the image), which no first-turn benchmark question
    allows; "first" also makes the first turn nearly always a yes/no one.
    exists_pairs: an existence draw asks two questions about the image, one answered Yes and one No (in a drawn
    order), as MME asks each image a Yes and a No question: the pair's answers cancel in the gradient of a bias
    towards either answer, leaving only what tells them apart, the image.
    option_lookup: the share of conversations given one more turn, a text-only drill (lookup_question) after the
    drawn turns and before the caption; it takes none of their places. At 0 nothing more is drawn from `rng`."""
    if yes_no_order not in YES_NO_ORDERS:
        raise ValueError(f"yes_no_order must be one of {YES_NO_ORDERS}, got {yes_no_order!r}")
    if not 0 <= option_lookup <= 1:
        raise ValueError(f"option_lookup is a share of conversations, between 0 and 1; got {option_lookup!r}")
    out, asked = [], set()
    for _ in range(8 * turns):  # bounded: a scene with one object has few distinct questions
        if len(out) == turns:
            break
        kind = rng.choice(("exists",) * exists_weight + ("short", "short") + ("choice",) * choice_weight + ("mme",)
                          + (("word", "word") if scene.word else ()))
        if kind == "exists" and exists_pairs:
            negative = rng.choice(("random", "adversarial"))
            pair = [(rng.choice(sorted({t.name for t in scene.things})), "Yes"),
                    (absent_object(scene, rng, negative), "No")]
            rng.shuffle(pair)
            candidates = [(f"Is there a {name} in the image?{SHORT}", answer) for name, answer in pair]
            if len(out) + 2 <= turns and not {question_asks(q) for q, _ in candidates} & asked:
                asked.update(question_asks(q) for q, _ in candidates)
                out += candidates
            continue
        if kind == "exists":
            name, answer = q_exists(scene, rng, rng.choice(("random", "adversarial")))
            question, answer = f"Is there a {name} in the image?{SHORT}", answer.capitalize()
        elif kind == "short":
            question, answer, _ = short_question(scene, rng)
            question += SHORT
        elif kind == "choice":
            stem, options, index = choice_question(scene, rng)
            question, answer = f"{stem}{letters(options)}{LETTER}", "ABCD"[index]
        elif kind == "mme":
            _, (yes, no) = mme_pair(scene, rng)
            question, answer = (yes, "Yes") if rng.random() < 0.5 else (no, "No")
            question += SHORT
        else:
            question, answer = "What word is written on the sign?" + SHORT, scene.word.lower()
        asks = question_asks(question)
        if asks not in asked:
            asked.add(asks)
            out.append((question, answer))
    if yes_no_order == "half_first":  # "first" in half the conversations (one draw more), else "drawn"
        yes_no_order = "first" if rng.random() < 0.5 else "drawn"
    if yes_no_order != "drawn":
        keep = 1 if yes_no_order == "after_first" else 0
        # stable: the drawn order within each group (the first-turn format rule below applies after)
        out = out[:keep] + sorted(out[keep:], key=lambda turn: turn[1] not in ("Yes", "No"))
    out = [(q if i == 0 or not q.endswith(SHORT) else q[:-len(SHORT)], a) for i, (q, a) in enumerate(out)]
    if option_lookup and rng.random() < option_lookup:
        out.append(lookup_question(rng))
    # The caption comes last, so that no answer can be read off it instead of the image.
    return out + ([("Describe the image.", describe(scene))] if caption else [])


def question_asks(question: str) -> tuple[str, ...]:
    """What a training question asks about the scene, whatever its format: "What color is the circle?", "Which
    color is the circle? A. ..." and "Is the circle red?" all ask the circle's colour, and one answer gives the
    others away."""
    words = question.split("\n")[0].rstrip("?").split()
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLOURS]
    if words[:2] in (["How", "many"], ["Are", "there"]):
        return ("count",)
    if words[:2] == ["What", "word"]:
        return ("reading",)
    if words[:2] == ["Which", "option"]:  # lookup_question: about the options, not the scene
        return ("lookup", *words[3:])
    if "left" in words or "right" in words:
        return ("side", *shapes)
    if words[:2] == ["Is", "there"]:
        return ("exists", *colours, *shapes)
    if "shape" in words:
        return ("shape", *colours)
    if "color" in words or words[:2] == ["Is", "the"]:
        return ("colour", *shapes)
    raise ValueError(f"not a question of this corpus: {question!r}")


# ---------------------------------------------------------------------------------------------------------
# writing a corpus


@dataclass
class CorpusSpec:
    seed: int = 0
    image_size: int = 96
    train_scenes: int = 2000
    turns: int = 3
    exists_weight: int = 1  # shares of existence questions among the training turns (training_turns)
    caption: bool = True  # each training conversation ends with a dense caption (training_turns)
    yes_no_order: str = "drawn"  # where the yes/no turns go (training_turns)
    exists_pairs: bool = False  # existence asked in Yes/No pairs about one image (training_turns)
    choice_weight: int = 1  # shares of multiple-choice questions among the training turns (training_turns)
    option_lookup: float = 0.0  # share of conversations with a text-only letter drill (training_turns)
    eval_per_task: int = 60  # questions per held-out set (POPE: per split; MME: pairs; MMBench: base questions)


def training_scenes(spec: CorpusSpec) -> tuple[list[Scene], random.Random]:
    """The corpus's training scenes, in the order of its training JSON, and its training stream after them (from
    which write_corpus draws the questions)."""
    rng = random.Random(f"train-{spec.seed}")
    return [sample_scene(rng) for _ in range(spec.train_scenes)], rng


def write_corpus(root: str | Path, spec: CorpusSpec) -> dict:
    """Training JSON + images under root/train, held-out sets (a data root of their own) under root/eval.
    Returns a manifest with per-set sizes and chance levels (also written to root/manifest.json)."""
    root = Path(root)
    train_scenes, train_rng = training_scenes(spec)
    eval_rng = random.Random(f"eval-{spec.seed}")
    seen = {scene.key() for scene in train_scenes}
    train_keys = set(seen)
    eval_keys: list[str] = []

    def held_out() -> Scene:
        while True:
            scene = sample_scene(eval_rng)
            if scene.key() not in seen:
                seen.add(scene.key())  # distinct from training and from each other
                eval_keys.append(scene.key())
                return scene

    images = root / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i, scene in enumerate(train_scenes):
        draw(scene, spec.image_size).save(images / f"{i:06d}.png")
        turns = training_turns(scene, train_rng, spec.turns, spec.exists_weight, spec.caption, spec.yes_no_order,
                               spec.exists_pairs, spec.choice_weight, spec.option_lookup)
        conversation = []
        for k, (question, answer) in enumerate(turns):
            conversation += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + question},
                             {"from": "gpt", "value": answer}]
        records.append({"id": f"scene-{i:06d}", "image": f"images/{i:06d}.png", "conversations": conversation})
    (root / "train" / "scenes.json").write_text(json.dumps(records))
    arank = []  # ScienceQA-style prompts on training scenes: what γ-MoD computes ARank over
    for i, scene in enumerate(train_scenes[:64]):
        question, options, _ = choice_question(scene, train_rng)
        arank.append({"image": f"images/{i:06d}.png", "question": f"{question}{letters(options)}{LETTER}"})
    (root / "train" / "arank.json").write_text(json.dumps(arank))
    popular = [name for name, _ in Counter(t.name for s in train_scenes for t in s.things).most_common(6)]
    chance = _write_eval(root / "eval", spec, held_out, eval_rng, popular)
    if train_keys & set(eval_keys):  # by construction never; checked, since the claims rest on it
        raise AssertionError("a held-out scene coincides with a training scene")
    (root / "train" / "scene_keys.json").write_text(json.dumps(sorted(train_keys)))
    (root / "eval" / "scene_keys.json").write_text(json.dumps(eval_keys))
    manifest = {"spec": asdict(spec), "train": {"json": "train/scenes.json", "images": "train/images",
                                                "samples": len(records)},
                "eval": {"data_root": "eval", "chance": chance}, "disjoint_scene_keys": True}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _write_eval(root: Path, spec: CorpusSpec, held_out, rng: random.Random, popular: list[str]) -> dict:
    """Each set in its benchmark's column schema (as tasks/fixtures.py writes them); returns chance levels."""
    from modbench.tasks.fixtures import _write

    size, n = spec.image_size, spec.eval_per_task
    chance = {}
    for split in ("adversarial", "popular", "random"):
        rows = []
        for i in range(n):
            scene = held_out()
            name, answer = q_exists(scene, rng, split, popular)
            rows.append({"question_id": f"{split}-{i}", "question": f"Is there a {name} in the image?",
                         "answer": answer, "image_source": f"scene_{split}_{i}", "image": draw(scene, size),
                         "category": split})
        _write(rows, root / "pope" / f"{split}.parquet")
    chance["pope_local"] = 0.5
    rows, options = [], []
    for i in range(n):
        scene = held_out()
        question, answer, k = short_question(scene, rng)
        options.append(k)
        rows.append({"id": f"q{i}", "imageId": f"img{i}", "question": question, "answer": answer,
                     "fullAnswer": answer, "image": draw(scene, size)})
    _write(rows, root / "gqa" / "testdev.parquet")
    chance["gqa_local"] = sum(1 / k for k in options) / n
    rows = []
    for i in range(n):
        scene = held_out()
        question, choices, index = choice_question(scene, rng)
        rows.append({"image": draw(scene, size), "question": question, "choices": choices, "answer": index,
                     "hint": "", "task": "closed choice", "grade": "grade2", "subject": "natural science",
                     "topic": "scenes", "category": "Scenes", "skill": "Identify shapes and colours", "lecture": "",
                     "solution": ""})
    _write(rows, root / "scienceqa_img" / "test.parquet")
    chance["scienceqa_img_local"] = 0.25
    rows = []
    for i in range(n):
        scene = held_out()
        while scene.word is None:
            scene = held_out()
        rows.append({"image_id": f"img{i}", "question_id": i, "question": "What word is written on the sign?",
                     "question_tokens": ["what", "word", "is", "written", "on", "the", "sign"],
                     "image": draw(scene, size), "image_width": size, "image_height": size,
                     "flickr_original_url": "", "flickr_300k_url": "", "answers": [scene.word.lower()] * 10,
                     "image_classes": ["sign"], "set_name": "val", "ocr_tokens": []})
    _write(rows, root / "textvqa" / "validation.parquet")
    chance["textvqa_val_local"] = 1 / len(WORDS)
    rows = []
    for i in range(n):
        scene = held_out()
        category, questions = mme_pair(scene, rng)
        image = draw(scene, size)
        for question, answer in zip(questions, ("Yes", "No")):
            rows.append({"question_id": f"{category}/{i}.png", "image": image, "answer": answer, "category": category,
                         "question": f"{question} Please answer yes or no."})  # MME's own wording
    _write(rows, root / "mme" / "test.parquet")
    chance["mme_local"] = 0.5
    rows = []
    for i in range(n):
        scene = held_out()
        question, options, index = choice_question(scene, rng)
        image = draw(scene, size)
        for k in range(4):
            rotated = options[k:] + options[:k]
            rows.append({"index": i + k * 1_000_000, "question": question, "hint": None, "A": rotated[0],
                         "B": rotated[1], "C": rotated[2], "D": rotated[3], "answer": "ABCD"[rotated.index(options[index])],
                         "category": "attribute_recognition", "image": image, "source": "scenes",
                         "l2-category": "finegrained_perception (instance-level)", "comment": None, "split": "dev"})
    _write(rows, root / "mmbench" / "dev.parquet")
    chance["mmbench_en_dev_local"] = 0.25 ** 4  # circular: all four rotations right
    return chance


def write_swapped_copy(eval_root: str | Path, out_root: str | Path) -> Path:
    """The held-out sets with every question shown another held-out scene's image: each distinct image of a
    file is replaced by the next distinct one (cyclically), so questions that share an image (MME's pairs,
    MMBench's circular copies) still share one. The answer format and the text stay as they are; what the image
    would tell is gone. A model's score here is what it gets without looking (the text's priors, chance), so its
    score with the right images minus this one is how much it uses them. (A blank image would be no control: it
    is unlike any training image, and a small model answers it with anything, or nothing.)"""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    eval_root, out_root = Path(eval_root), Path(out_root)
    for source in sorted(eval_root.rglob("*")):
        target = out_root / source.relative_to(eval_root)
        if source.is_dir():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix != ".parquet":
            shutil.copyfile(source, target)
            continue
        table = pq.read_table(source)
        columns = []
        for column in table.columns:
            if pa.types.is_struct(column.type) and {"bytes", "path"} <= {f.name for f in column.type}:
                cells = column.to_pylist()
                distinct = list(dict.fromkeys(c["bytes"] for c in cells if c is not None))
                following = {b: distinct[(i + 1) % len(distinct)] for i, b in enumerate(distinct)}
                column = pa.array([None if c is None else {**c, "bytes": following[c["bytes"]]} for c in cells],
                                  type=column.type)
            columns.append(column)
        tmp = target.with_name(f".{target.name}.tmp")
        pq.write_table(pa.Table.from_arrays(columns, schema=table.schema), tmp)
        tmp.replace(target)
    return out_root
