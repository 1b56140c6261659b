"""A stand-in installation of pyproject.toml's entry points, for tests and fresh interpreters.

The test venvs hold an editable install of the main checkout, whose entry points
were written when it was installed. A directory with a ``refstore-*.dist-info``
carrying every entry point this checkout's pyproject.toml declares (codecs, the
``reference`` fsspec protocol, the codec pipeline, the napari reader), put first on
``sys.path`` / ``PYTHONPATH``, shadows that install's metadata (importlib.metadata
keeps the first distribution of a name), so a process sees exactly what an install
of this checkout would declare. Nothing here imports refstore.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def entry_points_txt() -> str:
    """Every entry point declared in pyproject.toml (and its scripts), as an entry_points.txt."""
    project = _project()
    groups = {"console_scripts": project.get("scripts", {}), **project["entry-points"]}
    return "\n".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items())
        for group, entries in groups.items()
    )


def probe_site(root: Path) -> Path:
    """Write the stand-in ``refstore-*.dist-info`` under *root* and return *root* (for ``PYTHONPATH``)."""
    version = _project()["version"]
    dist = root / f"refstore-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: refstore\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(entry_points_txt())
    return root


def fresh_env(site: Path) -> dict[str, str]:
    """The environment of a fresh interpreter seeing *site* and this checkout, nothing else added."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
