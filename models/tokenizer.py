"""A tiny byte-level BPE tokenizer built offline by our own code, for the tiny variants.

It is trained deterministically on a small fixed corpus (the vicuna_v1 template and benchmark-style words), so
every tiny checkpoint ships the same tokenizer files that a real checkpoint directory would hold.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .prompt import VICUNA_V1_SYSTEM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TINY_VOCAB_SIZE = 512

_WORDS = (
    "USER: ASSISTANT: Is there a an the in on of to and or with what which how many color colour shape "
    "image picture photo question answer Answer the question using a single word or phrase. "
    "Answer with the option's letter from the given choices directly. Yes No yes no A B C D E "
    "red green blue yellow black white orange purple circle square triangle rectangle star text "
    "left right top bottom middle one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 "
    "object objects person cat dog car tree sign number letter word written shown visible Options: Hint:"
)


@functools.lru_cache(maxsize=1)
def _trained() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([VICUNA_V1_SYSTEM, _WORDS] * 4, trainer=trainer)
    return tok.to_str()


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (the trained JSON is cached; the wrapper is not shared mutable state)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained()),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    return tokenizer
