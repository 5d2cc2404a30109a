from lmms_eval.tasks.vizwiz_vqa.utils import (  # noqa: F401  (lmms-eval's own VizWiz functions)
    vizwiz_vqa_doc_to_text,
    vizwiz_vqa_doc_to_visual,
    vizwiz_vqa_process_results,
)
