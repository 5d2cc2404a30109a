"""MM-Vet with an optional GPT judge. No judge configured: every sample is "not scored" and so is the task;
a judge that fails on a sample raises (the sample is never given 0)."""

from __future__ import annotations

import os

JUDGE_ENV = ("MODBENCH_JUDGE_URL", "MODBENCH_JUDGE_MODEL", "MODBENCH_JUDGE_KEY")
NOT_SCORED = "not scored"


def mmvet_doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def mmvet_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def judge_configured() -> bool:
    return bool(os.environ.get("MODBENCH_JUDGE_URL"))


def _grade(question: str, answer: str, prediction: str) -> float:
    import httpx
    from lmms_eval.tasks.mmvet.utils import MM_VET_PROMPT  # MM-Vet's own few-shot grading prompt

    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    prompt = f"{MM_VET_PROMPT}\n{question} | {gt} | {prediction} |"
    url = os.environ["MODBENCH_JUDGE_URL"].rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {os.environ.get('MODBENCH_JUDGE_KEY', '')}"}
    body = {"model": os.environ.get("MODBENCH_JUDGE_MODEL", "gpt-4-0613"), "temperature": 0.0, "max_tokens": 8,
            "messages": [{"role": "user", "content": prompt}]}
    response = httpx.post(url, json=body, headers=headers, timeout=60)
    response.raise_for_status()
    content = response.json()["choices"][0]["message"]["content"].strip().split(" ")[0]
    score = float(content)
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"judge score {score} outside [0, 1]")
    return score


def mmvet_process_results(doc, results):
    score = _grade(doc["question"], doc["answer"], results[0]) if judge_configured() else None
    # not "score": lmms-eval would compute a CLT stderr over it
    return {"gpt_eval_score": {"question_id": doc["question_id"], "capability": doc.get("capability"),
                               "judge_score": score}}


def mmvet_aggregate(results):
    if any(r["judge_score"] is None for r in results):
        return NOT_SCORED
    return 100.0 * sum(r["judge_score"] for r in results) / len(results)
