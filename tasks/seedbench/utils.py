from lmms_eval.tasks.seedbench.utils import (  # noqa: F401  (lmms-eval's own SEED-Bench functions)
    seed_aggregation_result,
    seed_doc_to_text,
    seed_doc_to_visual,
    seed_process_result,
)
