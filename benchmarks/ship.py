"""Shipping a large manifest to other processes: pickle bytes, pickling and unpickling time.

What dask does with a store: pickle it in the client, unpickle it in workers
(on the same host, or on another host without the client's snapshot). Each
step runs in a fresh interpreter::

    python -m benchmarks.ship [--n 1000000] [--repeat 3] [--gen 10000000]

* ``json``: ``Manifest.open`` of a kerchunk JSON file of *n* references
  (templated URLs, :func:`benchmarks.data.big_json`);
* ``dict``: ``Manifest.from_dict`` of the same references (no source);
* ``gen``: with ``--gen N``, a kerchunk JSON whose one ``gen`` entry expands to N references.

For each: the pickle's size, the first ``pickle.dumps`` (it writes the
snapshot) and a second one, then ``pickle.loads`` + one lookup in a fresh
process on this host (same snapshot directory), and in a fresh process with
an empty snapshot directory of its own (another host). It prints a table of
medians and ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .data import big_json, big_key

_WRITER = r"""
import json, pickle, sys, time
from refstore import Manifest
kind, path, out = sys.argv[1:4]
t0 = time.perf_counter()
if kind == "dict":
    with open(path) as f:
        m = Manifest.from_dict(json.load(f))
else:
    m = Manifest.open(path)
t1 = time.perf_counter()
blob = pickle.dumps(m)
t2 = time.perf_counter()
again = pickle.dumps(m)
t3 = time.perf_counter()
open(out, "wb").write(blob)
print("RESULT " + json.dumps({"open_s": t1 - t0, "bytes": len(blob), "dumps_first_s": t2 - t1,
                               "dumps_again_s": t3 - t2, "n": len(m)}))
"""

_READER = r"""
import json, pickle, sys, time
import refstore  # imported before the clock starts: a dask worker has it already
blob = open(sys.argv[1], "rb").read()
key = sys.argv[2]
t0 = time.perf_counter()
try:
    m = pickle.loads(blob)
    ok = m.get(key) is not None
    err = None
except Exception as exc:
    ok, err = False, f"{type(exc).__name__}: {str(exc)[:120]}"
t1 = time.perf_counter()
print("RESULT " + json.dumps({"loads_lookup_s": t1 - t0, "ok": ok, "error": err}))
"""


def _run(code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"worker failed: {out.stderr[-2000:]}")


def _gen_json(cache_dir: Path, n: int) -> tuple[Path, str]:
    path = cache_dir / f"gen_{n}.json"
    cols = 1000
    rows = n // cols
    zarray = {"zarr_format": 2, "shape": [rows, cols], "chunks": [1, 1], "dtype": "<f4", "compressor": None,
              "filters": None, "fill_value": 0.0, "order": "C"}
    doc = {"version": 1, "templates": {"u": "s3://bench-bucket/prefix"},
           "refs": {".zgroup": '{"zarr_format": 2}', "data/.zarray": json.dumps(zarray)},
           "gen": [{"key": "data/{{i}}.{{j}}", "url": "{{u}}/file_{{j}}.bin", "offset": "{{i * 4}}", "length": "4",
                    "dimensions": {"i": {"start": 0, "stop": rows, "step": 1},
                                   "j": {"start": 0, "stop": cols, "step": 1}}}]}
    path.write_text(json.dumps(doc))
    return path, f"data/{rows - 1}.{cols - 1}"


def measure(kind: str, path: Path, key: str, repeat: int) -> dict[str, Any]:
    """Medians over *repeat* rounds of writer, same-host reader and other-host reader."""
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="ship-") as tmp:
            env = {**os.environ, "REFSTORE_SNAPSHOT_DIR": os.path.join(tmp, "here")}
            blob = os.path.join(tmp, "blob.pkl")
            row = _run(_WRITER, [kind, str(path), blob], env)
            same = _run(_READER, [blob, key], env)
            other_env = {**os.environ, "REFSTORE_SNAPSHOT_DIR": os.path.join(tmp, "elsewhere")}
            other = _run(_READER, [blob, key], other_env)
            row.update(same_s=same["loads_lookup_s"], same_ok=same["ok"], other_s=other["loads_lookup_s"],
                       other_ok=other["ok"], other_error=other["error"])
            runs.append(row)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
    return {"median": med, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gen", type=int, default=0, help="also a gen manifest of this many references")
    ap.add_argument("--only", nargs="*", default=["json", "dict"])
    args = ap.parse_args()
    cache = Path(os.environ.get("REFSTORE_BENCH_CACHE") or Path(tempfile.gettempdir()) / "refstore-bench-cache")
    cache.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, str, Path, str]] = []
    path = big_json(cache, args.n)
    for kind in args.only:
        cases.append((f"{kind} {args.n:,}", kind, path, big_key(args.n, args.n - 1)))
    if args.gen:
        gpath, gkey = _gen_json(cache, args.gen)
        cases.append((f"gen {args.gen:,}", "json", gpath, gkey))
    results = {}
    print("| manifest | pickle bytes | open s | first dumps s | again dumps s | loads+lookup same host s "
          "| loads+lookup other host s |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, p, key in cases:
        res = measure(kind, p, key, args.repeat)
        results[name] = res
        m, r0 = res["median"], res["runs"][0]
        other = f"{m['other_s']:.3f}" if r0["other_ok"] else f"fails ({r0['other_error']})"
        print(f"| {name} | {r0['bytes']:,} | {m['open_s']:.2f} | {m['dumps_first_s']:.3f} | "
              f"{m['dumps_again_s']:.4f} | {m['same_s']:.4f} | {other} |", flush=True)
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
