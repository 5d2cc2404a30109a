"""Prompt templates. vicuna_v1 is the template of LLaVA-1.5, LLaVA-HR, Mini-Gemini-HD and the MoD models."""

from __future__ import annotations

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
