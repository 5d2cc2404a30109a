#!/usr/bin/env python3
"""Bootstrap for a fresh clone: needs only python3.

    python3 dev.py bench   # the main job: the CPU-scale reproduction (quick), then the tiny matrix, tables, plots
    python3 dev.py test    # the tests
    python3 dev.py check   # regression check of the main job's runs against results/baselines/
    python3 dev.py ENV [-- ARGS]   # any tox env, e.g. `python3 dev.py test -- -k parity`

Makes .venv with the pinned tox (versions from constraints.txt), makes sure the one install of the project
and its pinned dependencies exists (`tox -e test --notest`, .tox/test), then runs `tox -e ENV`; the bench
envs run that install's `modbench`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def pinned(name: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, flags=re.M | re.I)
    return f"{name}=={match.group(1)}" if match else name


def ensure_tox() -> Path:
    tox = BIN / "tox"
    if not tox.exists():
        print(f"dev.py: creating {VENV} with {pinned('tox')}", flush=True)
        venv.create(VENV, with_pip=True)
        subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
                        pinned("tox")], check=True)
    return tox


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    env, rest = argv[0], argv[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    tox = ensure_tox()
    if env != "test":
        setup = subprocess.run([str(tox), "-e", "test", "--notest"], cwd=ROOT)
        if setup.returncode:
            return setup.returncode
    cmd = [str(tox), "-e", env]
    if rest:
        cmd += ["--", *rest]
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
