from lmms_eval.tasks.scienceqa.utils import (  # noqa: F401  (lmms-eval's own ScienceQA functions)
    sqa_doc_to_target,
    sqa_doc_to_text,
    sqa_doc_to_visual,
    sqa_process_results,
)
