"""What a submitit job runs (`python -u -m modbench.suite.submitit_job <folder>`), in place of `-m submitit.core._submit`.

submitit 1.5.3 finds its job environments through `pkg_resources.iter_entry_points`, and setuptools no longer
ships pkg_resources (removed in setuptools 81), so a job would die before it starts. Where pkg_resources is
missing, a stand-in answers that one call from importlib.metadata; then submitit's own entry point runs.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types


def _install_pkg_resources_stand_in() -> None:
    try:
        import pkg_resources  # noqa: F401
    except ModuleNotFoundError:
        def iter_entry_points(group: str):
            for entry in importlib.metadata.entry_points(group=group):
                yield types.SimpleNamespace(name=entry.name, module_name=entry.module, load=entry.load)

        stand_in = types.ModuleType("pkg_resources")
        stand_in.iter_entry_points = iter_entry_points
        sys.modules["pkg_resources"] = stand_in


if __name__ == "__main__":
    _install_pkg_resources_stand_in()
    from submitit.core.submission import submitit_main

    submitit_main()
