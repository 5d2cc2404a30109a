"""A multimodal model: a vision front-end (one file per host family) + the MoD decoder + a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from .config import ModelConfig, validate_resolved
from .core import ModForCausalLM, ModOutput, greedy_generate
from .prompt import IMAGE_PLACEHOLDER, TokenizedSample, tokenize_prompt
from .routing import IMAGE, PAD, RESPONSE


def build_frontend(cfg: ModelConfig) -> nn.Module | None:
    """The host family's vision front-end (models/hosts.py), or None for a text-only model."""
    from .hosts import host_family

    if cfg.vision is None:
        return None
    return host_family(cfg.family).frontend(cfg)


@dataclass
class Batch:
    """A padded batch ready for the decoder (left-padded for generation; training may pad right)."""

    inputs_embeds: torch.Tensor  # [B, S, H]
    token_types: torch.Tensor  # [B, S]
    labels: torch.Tensor | None  # [B, S], -100 outside the answers
    prompt_lengths: list[int]  # real prompt tokens per row (image tokens included)
    image_tokens: list[int]  # image tokens per row


# RoPE's inverse frequencies: transformers' from_pretrained keeps them float32 in a half-precision model.
FLOAT32_BUFFERS = ("inv_freq", "original_inv_freq")


def set_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Rebind the registered buffer `name` (dotted, as named_buffers gives it) of `module` to `value`."""
    owner, _, leaf = name.rpartition(".")
    module.get_submodule(owner)._buffers[leaf] = value


class ModVlm(nn.Module):
    """Host model. State-dict keys: language_model.* (LlamaForCausalLM names), vision.* (the front-end)."""

    def __init__(self, cfg: ModelConfig, tokenizer) -> None:
        super().__init__()
        # every model is built here, however its config was made: its family's and its scheme's checks
        self.cfg = validate_resolved(cfg)
        self.tokenizer = tokenizer
        self.language_model = ModForCausalLM(cfg)
        self.vision = build_frontend(cfg)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    def placed(self, device, dtype: torch.dtype) -> "ModVlm":
        """`self.to(device, dtype)`, except that RoPE's inverse frequencies stay float32, as in the authors' models
        loaded by transformers: rounded to half precision they move a late position's angle by radians (head 128,
        position 2,900: 0.7 rad in float16, 3.5 in bfloat16), and LLaVA-NeXT's prompts are that long."""
        keep = {name: buf for name, buf in self.named_buffers() if name.rsplit(".", 1)[-1] in FLOAT32_BUFFERS}
        self.to(device=device, dtype=dtype)
        for name, buf in keep.items():
            set_buffer(self, name, buf.to(device=self.device))
        return self

    def _embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.language_model.model.embed_tokens(torch.tensor(ids, dtype=torch.long, device=self.device))

    def build_batch(self, prompts: list[str], images: list[Image.Image | None] | None = None,
                    answers: list[str] | None = None) -> Batch:
        """Tokenise, splice image features at the <image> placeholder, assign token types, left-pad."""
        images = images if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"images: got {len(images)} for {len(prompts)} prompts")
        for i, image in enumerate(images):
            count = prompts[i].count(IMAGE_PLACEHOLDER)
            if image is not None and count != 1:
                raise ValueError(
                    f"prompt[{i}]: an image sample's prompt must contain {IMAGE_PLACEHOLDER} exactly once "
                    f"(found {count})"
                )
            if image is None and count:
                raise ValueError(f"prompt[{i}]: contains {IMAGE_PLACEHOLDER} but no image was given")
        samples = [tokenize_prompt(self.tokenizer, prompt, image is not None,
                                   answers[i] if answers is not None else None)
                   for i, (prompt, image) in enumerate(zip(prompts, images))]
        with_image = [image for image in images if image is not None]
        pixels = self.vision.preprocess(with_image) if with_image and self.vision is not None else None
        if with_image and self.vision is None:
            raise ValueError(f"model {self.cfg.name!r} has no vision front-end but images were given")
        return self.assemble(samples, pixels, with_labels=answers is not None)

    def encode_images(self, pixels) -> torch.Tensor | list[torch.Tensor]:
        """Front-end output per image: [N, T, H] (or a list of [T_i, H] when images differ in token count)."""
        return self.vision.encode(pixels.to(self.device))

    def assemble(self, samples: list[TokenizedSample], pixels=None, with_labels: bool = True,
                 features=None, pad_side: str = "left") -> Batch:
        """Embed tokenised samples, splice the encoded images (one per sample with `image_at`, in order: from
        `pixels`, or `features` already encoded) and pad into one batch: left for generation (every row's last
        token is its newest), right for training, where causality alone then hides the padding and attention
        runs without a mask (ModDecoder._mask)."""
        if pad_side not in ("left", "right"):
            raise ValueError(f"pad_side: 'left' or 'right', not {pad_side!r}")
        with_image = [i for i, sample in enumerate(samples) if sample.image_at is not None]
        if with_image and features is None:
            if pixels is None:
                raise ValueError(f"{len(with_image)} sample(s) place an image but no pixels were given")
            features = self.encode_images(pixels)
        rows = []
        for i, sample in enumerate(samples):
            if sample.image_at is None:
                rows.append((self._embed_ids(sample.ids), sample.types, sample.labels))
                continue
            feat = features[with_image.index(i)]
            at = sample.image_at
            embeds = torch.cat([self._embed_ids(sample.ids[:at]), feat.to(self.dtype), self._embed_ids(sample.ids[at:])])
            rows.append((embeds, sample.types[:at] + [IMAGE] * feat.shape[0] + sample.types[at:],
                         sample.labels[:at] + [-100] * feat.shape[0] + sample.labels[at:]))
        width = max(len(r[1]) for r in rows)
        hidden = self.cfg.llm.hidden_size
        embeds = torch.zeros(len(rows), width, hidden, dtype=self.dtype, device=self.device)
        token_types = torch.full((len(rows), width), PAD, dtype=torch.long, device=self.device)
        label_t = torch.full((len(rows), width), -100, dtype=torch.long, device=self.device)
        for b, (emb, types, labels) in enumerate(rows):
            n = len(types)
            span = slice(width - n, width) if pad_side == "left" else slice(0, n)
            embeds[b, span] = emb
            token_types[b, span] = torch.tensor(types, device=self.device)
            label_t[b, span] = torch.tensor(labels, device=self.device)
        prompt_lengths = [sum(t != RESPONSE for t in r[1]) for r in rows]
        return Batch(embeds, token_types, label_t if with_labels else None, prompt_lengths,
                     [r[1].count(IMAGE) for r in rows])

    def forward(self, prompts, images=None, answers=None, collect_stats=False, return_attentions=False) -> ModOutput:
        batch = self.build_batch(prompts, images, answers)
        return self.language_model(
            inputs_embeds=batch.inputs_embeds, token_types=batch.token_types, labels=batch.labels,
            collect_stats=collect_stats, return_attentions=return_attentions,
        )

    @torch.no_grad()
    def generate(self, prompts, images=None, max_new_tokens=16, min_new_tokens=0, use_cache=True,
                 collect_stats=False, output_scores=False) -> dict:
        """Greedy generation. Returns {"text": [...], "tokens": [[...]], ...routing stats if asked}."""
        batch = self.build_batch(prompts, images)
        out = greedy_generate(
            self.language_model, batch.inputs_embeds, batch.token_types, max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            min_new_tokens=min_new_tokens, use_cache=use_cache, collect_stats=collect_stats,
            output_scores=output_scores,
        )
        out["text"] = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in out["tokens"]]
        out["prompt_lengths"] = batch.prompt_lengths
        out["image_tokens"] = batch.image_tokens
        return out
