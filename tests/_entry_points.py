"""A stand-in installation of pyproject.toml's codec entry points, for fresh-interpreter tests.

The test venvs hold an editable install of the main checkout, whose entry points
were written when it was installed. A directory with one ``*.dist-info`` carrying
this checkout's ``zarr.codecs`` and ``numcodecs.codecs`` entry points, put first on
``PYTHONPATH``, makes a fresh interpreter see exactly what an install of this
checkout would declare. Nothing here imports refstore.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def entry_points_txt() -> str:
    """The zarr and numcodecs codec entry points declared in pyproject.toml, as an entry_points.txt."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    return "\n".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in declared[group].items())
        for group in ("zarr.codecs", "numcodecs.codecs")
    )


def probe_site(root: Path) -> Path:
    """Write the stand-in ``*.dist-info`` under *root* and return *root* (for ``PYTHONPATH``)."""
    dist = root / "refstore_codecs_probe-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: refstore-codecs-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(entry_points_txt())
    return root


def fresh_env(site: Path) -> dict[str, str]:
    """The environment of a fresh interpreter seeing *site* and this checkout, nothing else added."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
