"""Results files: schema version, environment metadata, atomic writes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from modbench.suite.project import code_dir

SCHEMA_VERSION = "1.0"  # major.minor; a loader refuses another major (results/SCHEMA.md)
ENVIRONMENT_KEYS = ("git", "python", "torch", "cuda", "device_name", "transformers", "lmms_eval", "timestamp")
REQUIRED = {
    "run": ("status", "errors", "resolved", "metrics", "efficiency", "peak_memory", "n_samples", "n_records", "files"),
    "smoke": ("runs", "failed"),
    "latency": ("runs", "table", "comparisons"),
    "overhead": ("samples", "seconds", "per_sample_seconds", "overhead_share"),
    "train": ("status", "scheme", "mod_layers", "steps", "tokens_seen", "wall_seconds", "median_step_seconds"),
    "reproduction": ("status", "result", "stages_run", "wall_seconds"),
    "reproduction-claims": ("source", "claims"),
    "baseline": ("provenance", "checks"),
}


class SchemaError(ValueError):
    """A results file this version of the suite cannot read; the message names the file and the field."""


def validate_results(data: dict, where: str = "results") -> dict:
    for key in ("schema_version", "kind"):
        if key not in data:
            raise SchemaError(f"{where}: missing '{key}'")
    major = str(data["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(f"{where}: schema_version {data['schema_version']} (this suite reads {SCHEMA_VERSION})")
    kind = data["kind"]
    if kind not in REQUIRED:
        raise SchemaError(f"{where}: unknown kind {kind!r}")
    needed = REQUIRED[kind] + (("spec", "environment") if kind != "baseline" else ())
    missing = [k for k in needed if k not in data]
    if missing:
        raise SchemaError(f"{where}: missing {missing}")
    if kind != "baseline":
        env_missing = [k for k in ENVIRONMENT_KEYS if k not in data["environment"]]
        if env_missing:
            raise SchemaError(f"{where}: environment lacks {env_missing}")
    return data


def load_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: corrupt JSON ({exc})") from None
    return validate_results(data, str(path))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# The suite's own output folders: a run writing its records there (`modbench reproduce` into
# results/reproduction/<preset>, `check --update-baselines`, the tables) changes no input of a computation, and
# must not make the next record of the same run say "dirty". results/paper is an input (the papers' tables).
OUTPUT_FOLDERS = ("results/reproduction", "results/runs", "results/tables", "results/baselines", "results/device")


def git_state(root: Path | None = None) -> dict:
    """The commit and dirty flag of the repository at `root` (default: the one holding the code that ran). Dirty:
    a tracked file differs from the commit, outside the suite's output folders (OUTPUT_FOLDERS)."""
    root = root or code_dir()
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                         *(f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS)))
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


# The variables that pin the CPU code paths of torch's own kernels, MKL (its conditional numerical reproducibility
# mode) and oneDNN; suite.reproduce sets them (`modbench reproduce --cpu-isa`).
CPU_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")


def _first_cpu(cpuinfo: str | None = None) -> dict[str, str]:
    """The fields of the first processor's block of /proc/cpuinfo (or of `cpuinfo`); {} where there is none."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says: trained-model numbers depend on
    it where a library picks its code path by CPU vendor (suite.reproduce.CPU_ISAS)."""
    return _first_cpu().get("model name") or platform.processor() or platform.machine()


# Instruction-set extensions named in a CPU id: which kernels the machine could run natively, which the pinned
# cpu_capability of a reproduction run no longer shows.
CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_id(cpuinfo: str | None = None) -> str:
    """Vendor, family and model, and the extensions of CPU_EXTENSIONS it has (Linux: the first processor of
    /proc/cpuinfo), e.g. 'AuthenticAMD family 25 model 17 (avx2 avx512f ...)'; '' where unknown. Two CPUs of
    one model name can differ here (the 'AMD EPYC' of a virtual machine is any of several generations)."""
    fields = _first_cpu(cpuinfo)
    if "vendor_id" not in fields:
        return ""
    flags = set(fields.get("flags", "").split())
    extensions = " ".join(e for e in CPU_EXTENSIONS if e in flags)
    return (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
            + (f" ({extensions})" if extensions else ""))


def environment() -> dict:
    """What a result depends on besides the run spec."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "transformers": _version("transformers"),
        "lmms_eval": _version("lmms-eval"),
        "modbench": _version("modbench"),
        "cpu": cpu_name(),
        "cpu_id": cpu_id(),
        "num_threads": torch.get_num_threads(),
        # which CPU kernels computed it: float results differ between AVX2 and AVX-512 code paths
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa_pins": {k: os.environ[k] for k in CPU_ISA_VARIABLES if k in os.environ},
        "argv": sys.argv,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def peak_memory_bytes(device) -> dict:
    """The peak memory so far: allocated by torch on a GPU, else the process's peak RSS."""
    import resource

    import torch

    if device.type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "process_peak_rss", "bytes": int(rss if sys.platform == "darwin" else rss * 1024)}


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON to a temporary file in the same directory, then rename: readers never see half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def results_record(kind: str, spec: dict, **payload) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "spec": spec, "environment": environment(), **payload}
