from lmms_eval.tasks.mmmu.utils import (  # noqa: F401  (lmms-eval's own MMMU functions)
    mmmu_aggregate_results,
    mmmu_doc_to_text,
    mmmu_doc_to_visual,
    mmmu_process_results,
)
