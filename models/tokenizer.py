"""A tiny byte-level BPE tokenizer built offline by our own code, for the tiny variants.

It is trained deterministically on a small fixed corpus (the vicuna_v1 template and benchmark-style words), so
every tiny checkpoint ships the same tokenizer files that a real checkpoint directory would hold.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .config import BUILTIN_VOCAB_SIZES
from .prompt import VICUNA_V1_SYSTEM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TINY_VOCAB_SIZE = BUILTIN_VOCAB_SIZES["tiny"]

_WORDS = (
    "USER: ASSISTANT: Is there a an the in on of to and or with what which how many color colour shape "
    "image picture photo question answer Answer the question using a single word or phrase. "
    "Answer with the option's letter from the given choices directly. Yes No yes no A B C D E "
    "red green blue yellow black white orange purple circle square triangle rectangle star text "
    "left right top bottom middle one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 "
    "object objects person cat dog car tree sign number letter word written shown visible Options: Hint:"
)


# The scene tokenizer (the CPU-scale reproduction's models): trained on the prompt formats and words of the
# drawn-scene corpus (tasks/scenes.py), so that the fixed text of a prompt takes few tokens and the image tokens
# dominate the sequence, as they do in LLaVA-HR's (1024 of ~1,400). Words it has not seen fall back to bytes.
SCENE_VOCAB_SIZE = BUILTIN_VOCAB_SIZES["scenes"]
_SCENE_TEXT = (
    "Answer the question using a single word or phrase.", "Answer with the option's letter from the given choices "
    "directly.", "Please answer yes or no.", "Is there a in the image? this image? Are there shapes in this image? "
    "Is the on the left or right? What color is the? What shape is the object? How many shapes are there? "
    "Which color is the? Which shape is? What word is written on the sign? A. B. C. D. Context: Hint: Describe "
    "the image. top middle bottom, sign",
    "USER: ASSISTANT: Yes No yes no zero one two three left right red green blue yellow purple orange circle square "
    "triangle star small big stop open exit cafe bank taxi park shop STOP OPEN EXIT CAFE BANK TAXI PARK SHOP",
)


def _bpe(texts: list[str], vocab_size: int) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=1)
def _trained() -> str:
    return _bpe([VICUNA_V1_SYSTEM, _WORDS] * 4, TINY_VOCAB_SIZE)


@functools.lru_cache(maxsize=1)
def _scene_trained() -> str:
    answers = _SCENE_TEXT[-1].split()  # an answer is tokenised alone (no leading space): one token each
    return _bpe([VICUNA_V1_SYSTEM] * 64 + list(_SCENE_TEXT) * 16 + answers * 16, SCENE_VOCAB_SIZE)


def build_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The tokenizer a variant names (ModelConfig.tokenizer): "tiny" or "scenes"."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}")
    return _wrap(TOKENIZERS[name]())


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer("tiny")


TOKENIZERS = {"tiny": _trained, "scenes": _scene_trained}


def _wrap(trained: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (the trained JSON is cached; the wrapper is not shared mutable state)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(trained),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    return tokenizer
