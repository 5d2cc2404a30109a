import os

# No test may reach a hub: everything is built from configs and fixtures.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Under pytest-xdist (tox runs `pytest -n auto`) each worker, and each subprocess a test starts, computes on one
# thread: two workers of two threads each on two cores run several times slower (oversubscription).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from drawing import draw_image  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_configure(config):
    """The fixture benchmarks in tasks/data, written once before any test (by the xdist controller, before its
    workers start), so that no two workers write them at once and no test sees them change."""
    if hasattr(config, "workerinput"):
        return
    from modbench.tasks.fixtures import write_all
    from modbench.tasks.registry import DATA_DIR, local_tasks

    # only the benchmarks missing a file: data a user prepared (`modbench data prepare`) is never overwritten
    missing = sorted({p.relative_to(DATA_DIR).parts[0] for entry in local_tasks().values()
                      for p in entry["data_files"] if not p.exists()})
    if missing:
        write_all(DATA_DIR, missing)


@pytest.fixture(scope="session")
def tokenizer():
    from modbench.models.tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def images():
    return [draw_image((200, 30, 30), "circle"), draw_image((30, 30, 200), "square", (30, 50)),
            draw_image((30, 160, 30), "circle", (64, 64))]


@pytest.fixture
def prompts():
    from modbench.models.prompt import vicuna_v1

    return [
        vicuna_v1("Is there a red circle in the image? Answer the question using a single word or phrase."),
        vicuna_v1("What colour is the shape?"),
        vicuna_v1("How many objects are shown in the picture? Answer with a number."),
    ]
