"""MMBench-en dev without a GPT judge: the answer letter is extracted offline, and a question counts as
correct under circular evaluation only if every circularly shifted copy of it (same index modulo 1e6) is."""

from __future__ import annotations

import math
import re
from collections import defaultdict

OPTIONS = ("A", "B", "C", "D", "E")
CIRCULAR_STRIDE = 1_000_000


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() not in (
        "", "nan", "None")


def mmbench_doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def mmbench_options(doc) -> dict[str, str]:
    return {letter: str(doc[letter]) for letter in OPTIONS if letter in doc and _present(doc[letter])}


def mmbench_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{letter}. {text}" for letter, text in mmbench_options(doc).items())
    hint = f"{doc['hint']}\n" if _present(doc.get("hint")) else ""
    return f"{kwargs.get('pre_prompt', '')}{hint}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """A letter the answer starts with ("B", "B.", "(B)", "Answer: B"), else the one option whose text it
    contains; None when it is ambiguous (never guessed)."""
    text = prediction.strip()
    match = re.match(r"^\(?(?:answer\s*(?:is)?\s*:?\s*)?\(?([A-E])\)?(?:[.:,)\s]|$)", text, flags=re.I)
    if match and match.group(1).upper() in options:
        return match.group(1).upper()
    hits = [letter for letter, option in options.items() if option and option.lower() in text.lower()]
    return hits[0] if len(hits) == 1 else None


def mmbench_process_results(doc, results):
    pred = extract_choice(results[0], mmbench_options(doc))
    row = {"index": int(doc["index"]), "pred": pred, "answer": doc["answer"], "category": doc.get("category")}
    return {"mmbench_circular_acc": row, "mmbench_acc": row}


def mmbench_accuracy(results):
    return sum(r["pred"] == r["answer"] for r in results) / len(results)


def mmbench_circular_accuracy(results):
    groups = defaultdict(list)
    for r in results:
        groups[r["index"] % CIRCULAR_STRIDE].append(r["pred"] == r["answer"])
    return sum(all(v) for v in groups.values()) / len(groups)
