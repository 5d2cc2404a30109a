from lmms_eval.tasks.gqa.utils import gqa_doc_to_text, gqa_doc_to_visual  # noqa: F401
