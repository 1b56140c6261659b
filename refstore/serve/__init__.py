"""The HTTP face: any manifest, virtual array or tile pyramid served as plain zarr (both
formats, standard codecs) to any client. Needs the ``serve`` extra (Starlette, uvicorn).

``refstore.serve.app({"era5": "refs.json"})`` is an ASGI application; ``refstore serve
era5=refs.json`` runs it with uvicorn. See ``spec/serve.md``.
"""

from __future__ import annotations

from typing import Any

from refstore.serve._config import DatasetConfig, ServerConfig, load_config

__all__ = ["DatasetConfig", "ServerConfig", "app", "load_config"]


def app(datasets: Any = None, *, config: ServerConfig | None = None, **server_options: Any) -> Any:
    """The ASGI application serving *datasets* (see :func:`refstore.serve._app.app`; needs Starlette)."""
    from refstore.serve._app import app as make

    return make(datasets, config=config, **server_options)
