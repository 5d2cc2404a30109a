"""Prompt templates. vicuna_v1 is the template of LLaVA-1.5, LLaVA-HR, Mini-Gemini-HD and the MoD models."""

from __future__ import annotations

from dataclasses import dataclass

from .routing import QUESTION, RESPONSE, SYSTEM

IMAGE_PLACEHOLDER = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def vicuna_v1(question: str, with_image: bool = True) -> str:
    """One-turn vicuna_v1 prompt, image first (as the LLaVA scripts place it); the answer follows 'ASSISTANT:'."""
    if with_image and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    return f"{VICUNA_V1_SYSTEM} USER: {question} ASSISTANT:"


def task_prompt(context: str, has_image: bool) -> str:
    """A benchmark's question (lmms-eval's doc_to_text) in vicuna_v1, the image placeholder first unless the
    question places it itself (MMMU's interleaved <image> markers)."""
    question = context
    if has_image and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    return vicuna_v1(question, with_image=False)


def task_sample(context: str, visuals, where: str = "sample") -> tuple[str, object]:
    """One benchmark sample as the hosts take it: its question (lmms-eval's doc_to_text) prompted by task_prompt
    and its one image in RGB (None: a text-only sample). The lmms-eval plugin and the latency profiler's task
    mode both build their inputs here, so what is timed is what is evaluated."""
    visuals = [v for v in (visuals or []) if v is not None]
    if len(visuals) > 1:
        raise ValueError(f"{where}: {len(visuals)} images; the LLaVA hosts take one per sample")
    image = visuals[0].convert("RGB") if visuals else None
    return task_prompt(context, image is not None), image


@dataclass
class TokenizedSample:
    """One sample's text as token ids with a type and a label per token; the image features (as many as the
    front-end gives this image) are spliced in at `image_at`. Built on the CPU (a data loader's workers)."""

    ids: list[int]
    types: list[int]
    labels: list[int]  # -100: no loss (everything but the assistant's answers)
    image_at: int | None = None  # index into ids where the image goes; None: a text-only sample


def tokenize_prompt(tokenizer, prompt: str, has_image: bool, answer: str | None = None) -> TokenizedSample:
    """A one-turn prompt (and optionally its answer) as the host models see it: BOS + the text before
    <image> typed "system", the image, the rest typed "question", the answer + EOS typed "response"."""
    return _tokenize(tokenizer, prompt, has_image, answer, [])


def tokenize_conversation(tokenizer, turns: list[tuple[str, str]], has_image: bool) -> TokenizedSample:
    """A multi-turn vicuna_v1 conversation, [("human", text), ("gpt", text), ...], as LLaVA trains on it:
    "{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>...", labels on the answers (and
    their EOS) only. The first turn is tokenised exactly as `tokenize_prompt` tokenises an evaluation prompt,
    so training and evaluation see the same ids; later questions are typed "question"."""
    first = vicuna_v1(turns[0][1], with_image=has_image)
    later = [(f"USER: {turns[i][1]} ASSISTANT:", turns[i + 1][1]) for i in range(2, len(turns), 2)]
    return _tokenize(tokenizer, first, has_image, turns[1][1], later)


def _tokenize(tokenizer, prompt: str, has_image: bool, answer: str | None,
              later: list[tuple[str, str]]) -> TokenizedSample:
    """`prompt` (and `answer`), then the `later` (question, answer) turns. Each piece is tokenised on its own (ids
    never merge across a piece boundary), all of them in one call of the tokenizer: its Python overhead per call
    costs more than encoding a short piece (a training conversation of 9 turns, 19 pieces, spent ~3 ms in it)."""
    before, after = prompt.split(IMAGE_PLACEHOLDER) if has_image else (None, prompt)
    texts = ([before] if has_image else []) + [after] + ([answer] if answer is not None else [])
    pieces = iter(_ids_each(tokenizer, texts + [text for turn in later for text in turn]))
    if has_image:
        head = [tokenizer.bos_token_id] + next(pieces)
        tail = next(pieces)
        ids, types, image_at = head + tail, [SYSTEM] * len(head) + [QUESTION] * len(tail), len(head)
    else:
        ids = [tokenizer.bos_token_id] + next(pieces)
        types, image_at = [QUESTION] * len(ids), None
    labels = [-100] * len(ids)
    if answer is not None:
        answer_ids = next(pieces) + [tokenizer.eos_token_id]
        ids, types, labels = ids + answer_ids, types + [RESPONSE] * len(answer_ids), labels + answer_ids
    for _ in later:
        question, answer_ids = next(pieces), next(pieces) + [tokenizer.eos_token_id]
        ids += question + answer_ids
        types += [QUESTION] * len(question) + [RESPONSE] * len(answer_ids)
        labels += [-100] * len(question) + answer_ids
    return TokenizedSample(ids, types, labels, image_at)


def _ids_each(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids without special tokens (an empty text: none), from one call of the tokenizer."""
    encoded = iter(tokenizer([t for t in texts if t], add_special_tokens=False).input_ids if any(texts) else [])
    return [next(encoded) if text else [] for text in texts]
