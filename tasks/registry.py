"""Which local data files each local task (or group) reads, from the YAMLs themselves (one source of truth)."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parent


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@functools.lru_cache(maxsize=1)
def local_tasks() -> dict[str, dict]:
    """task or group name -> {"yaml": path, "data_files": [paths], "tasks": [subtasks] (groups)}."""
    out = {}
    for path in sorted(TASKS_DIR.glob("*/*.yaml")):
        conf = yaml.load(path.read_text(), Loader=_Loader)
        if "group" in conf:
            out[conf["group"]] = {"yaml": path, "tasks": list(conf["task"]), "data_files": []}
            continue
        files = (conf.get("dataset_kwargs") or {}).get("data_files") or {}
        files = files.values() if isinstance(files, dict) else [files]
        out[conf["task"]] = {"yaml": path, "data_files": [(path.parent / f).resolve() for f in files]}
    return out


def data_files_for(task: str) -> list[Path]:
    entry = local_tasks().get(task)
    if entry is None:
        return []  # not one of ours: lmms-eval reports unknown tasks itself
    if "tasks" in entry:
        return [p for sub in entry["tasks"] for p in data_files_for(sub)]
    return entry["data_files"]
