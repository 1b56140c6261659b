"""``refstore serve``: the command line and TOML configuration glue, running the app with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_serve_parser", "app_from_env", "config_from_args"]

#: The environment variables :func:`app_from_env` reads.
CONFIG_ENV = "REFSTORE_SERVE_CONFIG"
DATASETS_ENV = "REFSTORE_SERVE_DATASETS"


def app_from_env() -> Any:
    """The app for ``uvicorn --factory refstore.serve._cli:app_from_env --workers N`` (or gunicorn).

    Reads the TOML file named by ``REFSTORE_SERVE_CONFIG`` and/or the whitespace-separated
    ``name=source`` items of ``REFSTORE_SERVE_DATASETS``; each worker process calls it once.

    Raises
    ------
    ValueError
        If neither variable names a dataset.
    """
    import os

    from refstore.serve._app import app
    from refstore.serve._config import ServerConfig, load_config, parse_dataset_args

    path = os.environ.get(CONFIG_ENV)
    base = load_config(path) if path else ServerConfig()
    given = parse_dataset_args(os.environ.get(DATASETS_ENV, "").split())
    if not base.datasets and not given:
        raise ValueError(f"nothing to serve: set {CONFIG_ENV} to a TOML file or {DATASETS_ENV} to name=source items")
    return app(config=base.replace(datasets=base.datasets + given))


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~refstore.serve.ServerConfig` the parsed arguments describe.

    Raises
    ------
    ValueError
        For a bad dataset argument or configuration file, naming it.
    """
    from refstore.serve._config import ServerConfig, load_config, parse_dataset_args

    base = load_config(args.config) if args.config else ServerConfig()
    given = parse_dataset_args(args.datasets, transcode=args.transcode)
    cors = None if args.cors_origin is None else tuple(args.cors_origin)
    cfg = base.replace(datasets=base.datasets + given, host=args.host, port=args.port, cors_origins=cors,
                       max_in_flight=args.max_in_flight, queue_limit=args.queue_limit)
    if args.show_urls:
        cfg = cfg.replace(redact_urls=False)
    if not cfg.datasets:
        raise ValueError("nothing to serve: give datasets as name=source, or --config FILE")
    return cfg


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise ValueError("refstore serve needs the serve extra: pip install 'refstore[serve]'") from exc
    from refstore.serve._app import app

    cfg = config_from_args(args)
    application = app(config=cfg)
    print(f"refstore serve: {', '.join(d.name for d in cfg.datasets)} at http://{cfg.host}:{cfg.port}/", flush=True)
    uvicorn.run(application, host=cfg.host, port=cfg.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful, access_log=args.access_log)
    return 0


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``refstore`` argparse *subparsers* (sets ``func``)."""
    p = subparsers.add_parser("serve", help="serve manifests, virtual arrays and tile pyramids as plain zarr over HTTP")
    p.add_argument("datasets", nargs="*", help="name=source: a manifest (JSON/parquet), a .dzi, or a zarr folder")
    p.add_argument("--config", help="a TOML file with [server] and [datasets.<name>] tables (see spec/serve.md)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--transcode", choices=("none", "gzip", "zstd", "blosc"), default=None,
                   help="codec for chunks a generic client cannot decode (default gzip)")
    p.add_argument("--cors-origin", action="append", default=None, help="an origin allowed cross-site (repeat; default *)")
    p.add_argument("--max-in-flight", type=int, default=None, help="requests answered at once (default 64)")
    p.add_argument("--queue-limit", type=int, default=None, help="requests allowed to wait before 503 (default 1024)")
    p.add_argument("--show-urls", action="store_true", help="name source URLs in error messages (default: redacted)")
    p.add_argument("--graceful", type=float, default=10.0, help="seconds to drain requests on shutdown")
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true")
    p.set_defaults(func=_serve)
    return p
