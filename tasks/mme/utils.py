from lmms_eval.tasks.mme.utils import (  # noqa: F401  (lmms-eval's own MME functions)
    mme_aggregate_results,
    mme_doc_to_text,
    mme_doc_to_visual,
    mme_process_results,
)
