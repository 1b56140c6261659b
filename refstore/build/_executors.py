"""Where the parallel builder's tasks run: a local process pool, or a dask distributed cluster.

Both executors take the same calls: ``submit(fn, *args)`` returns a future; arguments may
hold futures of earlier tasks (in lists too), which the task receives as their results;
``as_completed(futures)`` yields futures as they finish. On a dask cluster results stay in
the workers' memory and travel worker to worker; only what the client asks for with
``gather`` reaches it. The process pool hands every result back to this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import as_completed as _pool_as_completed
from typing import Any


class PoolExecutor:
    """Tasks in a :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes.

    Processes are started with ``forkserver`` where there is one (``spawn`` elsewhere):
    forking a process whose threads (zarr's event loop, h5py) hold locks could deadlock
    the child.
    """

    def __init__(self, workers: int | None = None) -> None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *[_resolved(a) for a in args])

    def then(self, fn: Callable[[Any], Any], future: Future[Any]) -> Future[Any]:
        """A future of ``fn(future's result)``, computed here (results are here already)."""
        out: Future[Any] = Future()

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            try:
                out.set_result(fn(f.result()))
            except Exception as err:  # noqa: BLE001 - handed to whoever waits, as a task's error would be
                out.set_exception(err)

        future.add_done_callback(done)
        return out

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        return _pool_as_completed(list(futures))

    def gather(self, futures: list[Any]) -> list[Any]:
        return [f.result() for f in futures]

    def release(self, futures: Iterable[Any]) -> None:
        """Nothing to release: results already live in this process."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _resolved(arg: Any) -> Any:
    """``arg`` with (lists of) finished futures replaced by their results."""
    if isinstance(arg, Future):
        return arg.result()
    if isinstance(arg, list):
        return [_resolved(a) for a in arg]
    return arg


class DaskExecutor:
    """Tasks on a dask distributed cluster, through ``client`` (a ``distributed.Client``).

    A client this executor made from a scheduler address is closed by :meth:`close`; one
    given by the caller is left open.
    """

    def __init__(self, client: Any, *, owned: bool = False) -> None:
        self.client = client
        self._owned = owned
        self.workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))

    @classmethod
    def connect(cls, address: str, timeout: float = 60) -> DaskExecutor:
        """An executor on the scheduler at ``address`` (``tcp://host:8786``)."""
        distributed = _distributed()
        return cls(distributed.Client(address, timeout=timeout, set_as_default=False), owned=True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def then(self, fn: Callable[[Any], Any], future: Any) -> Any:
        """A future of ``fn(future's result)``, computed in the worker that holds the result."""
        return self.client.submit(fn, future, pure=False)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        return iter(_distributed().as_completed(list(futures)))

    def gather(self, futures: list[Any]) -> list[Any]:
        return list(self.client.gather(futures))

    def release(self, futures: Iterable[Any]) -> None:
        """Let the cluster forget ``futures``' results (workers free their memory)."""
        for f in futures:
            f.release()

    def close(self) -> None:
        if self._owned:
            self.client.close()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError(
            "running on a dask cluster needs dask.distributed: pip install 'refstore[cluster]'"
        ) from None
    return distributed


def make_executor(client: Any = None, scheduler: str | None = None, workers: int | None = None) -> Any:
    """The executor for ``client`` (a ``distributed.Client``), else for a ``scheduler`` address,
    else a local process pool of ``workers`` processes (default: one per core)."""
    if client is not None and scheduler is not None:
        raise ValueError("give a client or a scheduler address, not both")
    if client is not None:
        return DaskExecutor(client)
    if scheduler is not None:
        return DaskExecutor.connect(scheduler)
    return PoolExecutor(workers)
