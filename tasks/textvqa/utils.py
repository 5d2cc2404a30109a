from lmms_eval.tasks.textvqa.utils import (  # noqa: F401  (lmms-eval's own TextVQA functions)
    textvqa_doc_to_text,
    textvqa_doc_to_visual,
    textvqa_process_results,
)


def textvqa_exact_match(doc, result):
    """lmms-eval's VQA accuracy, without the submission-file metric (no test-server upload here)."""
    return {"exact_match": textvqa_process_results(doc, result)["exact_match"]}
