"""Which local data files each local task (or group) reads, from the YAMLs themselves (one source of truth)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
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
        # normpath, not resolve: tasks/data may be a link, and data roots are mapped by path
        out[conf["task"]] = {"yaml": path, "data_files": [Path(os.path.normpath(path.parent / f)) for f in files]}
    return out


def close_task_names(task: str, known: list[str]) -> list[str]:
    """The local tasks a misspelt or built-in task name most likely meant (`gqa` -> gqa_local)."""
    import difflib

    close = ([f"{task}_local"] if f"{task}_local" in known else []) + difflib.get_close_matches(task, known, n=3,
                                                                                              cutoff=0.6)
    return list(dict.fromkeys(close))


def data_files_for(task: str) -> list[Path]:
    entry = local_tasks().get(task)
    if entry is None:
        return []  # not one of ours: lmms-eval reports unknown tasks itself
    if "tasks" in entry:
        return [p for sub in entry["tasks"] for p in data_files_for(sub)]
    return entry["data_files"]


DATA_DIR = TASKS_DIR / "data"

# Imported by lmms-eval at module level but used only on paths our tasks never take: `evaluate` (HF's metric
# hub: lmms_eval.api.registry calls `evaluate.load` only for a task naming an `hf_evaluate` metric). It costs
# ~2 s of every process's start-up (it pulls transformers' pipelines and scipy.stats).
UNUSED_LMMS_EVAL_IMPORTS = ("evaluate",)


class DeferredModule(types.ModuleType):
    """Bound in place of a module not imported yet; the first attribute it lacks imports the real module (and
    takes its namespace). `__file__` and `__spec__` are set, so `inspect.getmodule`'s scan of sys.modules does
    not load it."""

    def __getattr__(self, attr: str):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def defer_unused_lmms_eval_imports(names: tuple[str, ...] = UNUSED_LMMS_EVAL_IMPORTS,
                                   importer: str = "lmms_eval.api.registry") -> list[str]:
    """Import `importer` (lmms-eval's module that imports them) with `names` deferred: each is bound there to a
    DeferredModule that loads the real module at its first use. The stand-ins leave sys.modules again once
    `importer` is imported, so any later `import evaluate` (or of a submodule) is an ordinary import. Called
    where a command is about to import lmms-eval (a run, the profilers, a check), never on import; behaviour
    is unchanged. Returns the names deferred (none once `importer` is imported)."""
    if importer in sys.modules:
        return []
    standing = {}
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue  # not installed: lmms-eval's own import error, not ours
        module = DeferredModule(name)
        module.__file__, module.__spec__ = spec.origin, spec
        sys.modules[name] = standing[name] = module
    try:
        importlib.import_module(importer)
    finally:
        for name, module in standing.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return list(standing)


def task_manager(data_root: str | Path | None = None, verbosity: str = "ERROR"):
    """lmms-eval's TaskManager over our local tasks only, reading benchmark data from `data_root`.

    Indexing lmms-eval's ~3,200 built-in YAMLs costs seconds in every process and none of them is ours, so
    they are left out (`include_defaults=False`). The YAMLs name `../data/<benchmark>/<split>.parquet`; with a
    `data_root` those paths are rewritten to `<data_root>/<benchmark>/<split>.parquet` as each config is read,
    so runs on different roots never touch the checkout (the unmodified lmms-eval CLI keeps reading tasks/data).
    """
    defer_unused_lmms_eval_imports()
    from lmms_eval.tasks import TaskManager

    root = Path(data_root).resolve() if data_root else None

    class LocalTaskManager(TaskManager):
        def _get_config(self, name):
            config = super()._get_config(name)
            files = (config.get("dataset_kwargs") or {}).get("data_files")
            if root is None or not files:
                return config
            yaml_dir = Path(self._get_yaml_path(name)).parent
            moved = {split: str(relocate(path, yaml_dir, root)) for split, path in _as_dict(files).items()}
            return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": moved}}

    return LocalTaskManager(include_path=str(TASKS_DIR), include_defaults=False, verbosity=verbosity)


def load_tasks(tasks: list[str], data_root: str | Path | None = None) -> dict:
    """lmms-eval's task objects of local tasks, by task name (a group's member tasks each under its own name):
    the one loader of documents and task configs outside an evaluation (latency's inputs, check's recomputation)."""
    defer_unused_lmms_eval_imports()
    from lmms_eval.tasks import get_task_dict

    def leaves(task_dict):
        for key, value in task_dict.items():
            if isinstance(value, dict):
                yield from leaves(value)
            else:
                yield getattr(value, "config", None) and value.config.task or str(key), value

    return dict(leaves(get_task_dict(list(tasks), task_manager(data_root))))


def relocate(path: str | Path, yaml_dir: Path, root: Path) -> Path:
    """A YAML's data file (relative to its folder, or already made absolute by lmms-eval) under `root`."""
    full = Path(os.path.normpath(yaml_dir / path))
    try:
        return root / full.relative_to(Path(os.path.normpath(DATA_DIR)))
    except ValueError:
        raise ValueError(f"{yaml_dir}: data file {path} is not under {DATA_DIR}") from None


def _as_dict(files) -> dict:
    if not isinstance(files, dict):
        raise ValueError(f"local task data_files must map split -> file, got {files!r}")
    return files


def data_files_under(task: str, root: str | Path | None) -> list[Path]:
    """The files `task` reads when the data root is `root` (default tasks/data)."""
    files = data_files_for(task)
    if not root:
        return files
    return [relocate(p, TASKS_DIR, Path(root).resolve()) for p in files]


def check_data(tasks: list[str], data_root: str | Path | None = None) -> None:
    """A clear error before lmms-eval turns a missing parquet into a hub lookup."""
    root = Path(data_root) if data_root else DATA_DIR
    if not root.exists():
        raise FileNotFoundError(
            f"no benchmark data at {root}: run `modbench data fixtures` (or `modbench data prepare`)"
            + (f" with --root {root}" if data_root else ""))
    missing = [str(p) for task in tasks for p in data_files_under(task, data_root) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"benchmark data missing: {missing[:5]} (run `modbench data fixtures`)")
