"""LLaVA's instruction-tuning JSON (llava_v1_5_mix665k.json, LLaVA-NeXT-Data) as training batches.

A file is a list of {id, image (a path relative to an image folder; optional), conversations: [{from:
human|gpt, value}, ...]} with <image> in the first human turn. Each sample is tokenised as the hosts are
trained (vicuna_v1, labels on the assistant turns only, `models.prompt.tokenize_conversation`) and its image
preprocessed by the model family's own front-end, both in the data loader (worker processes when
num_workers > 0), never inside the training step.

A broken sample (image missing or unreadable, <image> without an image or an image without <image>, an empty
or one-sided conversation, a sample longer than the model's context) raises `SampleError` naming the sample id
and the file; with `skip_bad=True` it is left out of its batch and reported in `TrainBatch.bad`, so that the
trainer counts it in the run record. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from modbench.models.prompt import IMAGE_PLACEHOLDER, TokenizedSample, tokenize_conversation

ROLES = ("human", "gpt")


class SampleError(ValueError):
    """A training sample cannot be used; the message names the sample id and the file."""


@dataclass
class BadSample:
    id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.id!r} ({self.file}): {self.reason}"


@dataclass
class TrainBatch:
    ids: list[str]
    samples: list[TokenizedSample]
    pixels: object  # the front-end's preprocess output for the samples with an image, in order (or None)
    bad: list[BadSample] = field(default_factory=list)
    tower_features: torch.Tensor | None = None  # instead of pixels: the frozen tower's output per image

    def __len__(self) -> int:
        return len(self.samples)


class TowerFeatures:
    """A frozen vision tower's output (what the projector reads) for each training image, keyed by the image
    path as the training JSON writes it: training then runs the projector on these instead of decoding,
    preprocessing and encoding each image at every step. The file names the tower it came from (a digest of its
    weights), which training checks (the reproduction's vision stage writes it beside its checkpoint)."""

    FILE = "tower_features.safetensors"

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
            self.names = {name: i for i, name in enumerate(json.loads(metadata["images"]))}
            self.features = f.get_tensor("features")
        self.tower_digest = metadata["tower_digest"]
        self.path = Path(path)

    @staticmethod
    def digest(tower: torch.nn.Module) -> str:
        """sha1 over the tower's weights: which tower a features file belongs to."""
        import hashlib

        sha = hashlib.sha1()
        for name, tensor in sorted(tower.state_dict().items()):
            sha.update(name.encode())
            sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return sha.hexdigest()

    @staticmethod
    def write(path: str | Path, names: list[str], features: torch.Tensor, tower: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        if len(names) != len(features):
            raise ValueError(f"{len(names)} image names for {len(features)} feature rows")
        save_file({"features": features.contiguous()}, str(path),
                  metadata={"images": json.dumps(names), "tower_digest": TowerFeatures.digest(tower)})

    def check(self, tower: torch.nn.Module, tokens: int, hidden: int) -> None:
        """An error unless these rows came from `tower` (as it is now) and fit its front-end's shape."""
        if tuple(self.features.shape[1:]) != (tokens, hidden):
            raise ValueError(f"{self.path}: rows of {tuple(self.features.shape[1:])}, the tower gives "
                             f"{(tokens, hidden)}")
        if self.digest(tower) != self.tower_digest:
            raise ValueError(f"{self.path} was computed by another tower than the model's (its weights differ)")

    def __getitem__(self, relative: str) -> torch.Tensor:
        try:
            return self.features[self.names[relative]]
        except KeyError:
            raise SampleError(f"image {relative} has no row in {self.path}") from None


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SampleError(f"{path}: training data file not found") from None
    except json.JSONDecodeError as exc:
        raise SampleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise SampleError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    return data


class InstructionDataset(torch.utils.data.Dataset):
    """Item i: (sample id, TokenizedSample, PIL image or None), or a BadSample."""

    def __init__(self, path: str | Path, image_folder: str | Path | None, tokenizer, image_tokens: int,
                 max_length: int, tower_features: TowerFeatures | None = None) -> None:
        self.path = Path(path)
        self.records = read_records(self.path)
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.tokenizer = tokenizer
        self.image_tokens = image_tokens  # the most image tokens the front-end gives one image
        self.max_length = max_length
        self.tower_features = tower_features  # given: an image item is its feature row, not a PIL image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        sample_id = str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"
        try:
            return self._load(record, sample_id)
        except SampleError as exc:
            return BadSample(sample_id, str(self.path), str(exc))

    def _load(self, record, sample_id: str):
        if not isinstance(record, dict):
            raise SampleError(f"a sample must be an object, got {type(record).__name__}")
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise SampleError("empty conversation")
        pairs = []
        for i, turn in enumerate(turns):
            role, text = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
            if role != ROLES[i % 2] or not isinstance(text, str):
                raise SampleError(f"turn {i} is {role!r}: a conversation alternates human, gpt, ... starting with "
                                  "human, each with a string value")
            pairs.append((role, text))
        if len(pairs) % 2:
            raise SampleError("one-sided conversation: the last human turn has no answer")
        placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in pairs)
        image = None
        if record.get("image"):
            if placeholders != 1 or IMAGE_PLACEHOLDER not in pairs[0][1]:
                raise SampleError(f"an image sample needs {IMAGE_PLACEHOLDER} exactly once, in the first human turn "
                                  f"(found {placeholders})")
            image = self._image(record["image"])
        elif placeholders:
            raise SampleError(f"{IMAGE_PLACEHOLDER} in the conversation but no image")
        sample = tokenize_conversation(self.tokenizer, pairs, has_image=image is not None)
        length = len(sample.ids) + (self.image_tokens if image is not None else 0)
        if length > self.max_length:
            raise SampleError(f"{length} tokens (image included) exceed the model's context of {self.max_length}")
        return sample_id, sample, image

    def _image(self, relative: str) -> Image.Image | torch.Tensor:
        if self.tower_features is not None:
            return self.tower_features[relative]
        return self.read_image(relative)

    def read_image(self, relative: str) -> Image.Image:
        path = self.image_folder / relative
        if not path.is_file():
            raise SampleError(f"image file {path} not found")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except Exception as exc:  # PIL raises several types for a corrupt file
            raise SampleError(f"image file {path} is unreadable ({type(exc).__name__}: {exc})") from None


class Collate:
    """Batches dataset items; preprocesses the images with the model family's front-end (in the worker)."""

    def __init__(self, preprocess, skip_bad: bool) -> None:
        self.preprocess = preprocess
        self.skip_bad = skip_bad

    def __call__(self, items) -> TrainBatch:
        bad = [item for item in items if isinstance(item, BadSample)]
        if bad and not self.skip_bad:
            raise SampleError(f"{bad[0]} (--skip-bad-samples leaves such samples out and counts them)")
        good = [item for item in items if not isinstance(item, BadSample)]
        images = [image for _, _, image in good if image is not None]
        ids, samples = [i for i, _, _ in good], [s for _, s, _ in good]
        if images and isinstance(images[0], torch.Tensor):  # TowerFeatures rows
            return TrainBatch(ids, samples, None, bad, tower_features=torch.stack(images))
        pixels = self.preprocess(images) if images else None
        return TrainBatch(ids, samples, pixels, bad)


def modality_lengths(records: list) -> list[int]:
    """Per sample, what LLaVA's `--group_by_modality_length` groups by: the conversation's word count, positive
    for a sample with an image and negative for a text-only one (a malformed record counts as text-only with
    length -1: it is reported as a bad sample when loaded, not here)."""
    out = []
    for record in records:
        turns = record.get("conversations") if isinstance(record, dict) else None
        words = sum(len(t["value"].split()) for t in turns or ()
                    if isinstance(t, dict) and isinstance(t.get("value"), str))
        has_image = isinstance(record, dict) and bool(record.get("image"))
        out.append(max(words, 1) * (1 if has_image else -1))
    return out


def modality_grouped_order(lengths: list[int], global_batch: int, generator: torch.Generator) -> list[int]:
    """An epoch's sample order in which every global batch holds one modality but the last (the two kinds'
    remainders, mixed), as LLaVA's and γ-MoD's fine-tuning (`--group_by_modality_length True`) draws it: the
    image samples and the text-only ones are each shuffled and cut into global batches, each sorted longest
    first (data-parallel ranks take every world-th sample of it: similar lengths, rank 0 the longest; LLaVA
    deals each sample to the lightest rank instead); those batches are shuffled together, and the remainders
    follow. Unlike LLaVA's sampler, whose inner shuffles draw from the
    global RNG, every draw here comes from `generator`, so the order is a function of (seed, epoch) and a
    resumed run sees the same batches."""
    groups = [[i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n < 0]]
    batches, rest = [], []
    for group in groups:
        shuffled = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        full = len(shuffled) - len(shuffled) % global_batch
        batches += [sorted(shuffled[k:k + global_batch], key=lambda i: -abs(lengths[i]))
                    for k in range(0, full, global_batch)]
        rest += shuffled[full:]
    order = [i for b in torch.randperm(len(batches), generator=generator).tolist() for i in batches[b]]
    return order + sorted(rest, key=lambda i: -abs(lengths[i]))


class EpochBatches(torch.utils.data.Sampler):
    """Index batches in a seeded order per epoch, starting at batch `start` of epoch `epoch` (resume). The
    order is a function of (seed, epoch) only, so an interrupted run continues with exactly the batches an
    uninterrupted one would have seen. With `lengths` (`modality_lengths`), batches are grouped by modality
    (`modality_grouped_order`); without, the order is a plain permutation."""

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int = 0, start: int = 0, rank: int = 0,
                 world: int = 1, lengths: list[int] | None = None) -> None:
        self.size, self.batch_size, self.seed, self.epoch, self.start = size, batch_size, seed, epoch, start
        self.rank, self.world = rank, world  # data parallel: each process loads its share of a global batch
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"{len(lengths)} lengths for {size} samples")
        self.lengths = lengths

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.lengths is not None:
            return modality_grouped_order(self.lengths, self.batch_size, generator)
        return torch.randperm(self.size, generator=generator).tolist()

    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size  # full batches only: every step sees the same batch size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def __iter__(self):
        order = self.order(self.epoch)
        for b in range(self.start, self.batches_per_epoch()):
            yield order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world]
