from lmms_eval.tasks.vqav2.utils import (  # noqa: F401  (lmms-eval's own VQAv2 functions)
    vqav2_doc_to_text,
    vqav2_doc_to_visual,
    vqav2_process_results_val,
)
