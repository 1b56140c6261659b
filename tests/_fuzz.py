"""Hypothesis strategies of hostile manifests, and the property every manifest reader must keep.

The strategies build kerchunk reference documents that have the right shape
and wild values (huge and negative integers, odd keys, nested junk, values of
the wrong type, zarr v2 and v3 metadata mixed, bad templates, ``gen`` entries
with huge ranges), and mutate the bytes of valid files. :func:`check_opens`
states the property: an input either opens, and then listing and reading it
raises nothing but refstore's errors (or ``KeyError``/``FileNotFoundError``
for a missing key), or it raises :class:`refstore.ManifestError`; within a
time and a memory bound. Nothing here touches the network: references point
into ``memory://fuzz/`` and the URL policy refuses anything else.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import pickle
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import refstore
from refstore.errors import ManifestError, RefstoreError
from refstore.manifest import budgets

#: Examples per property in CI; ``REFSTORE_FUZZ_EXAMPLES=20000`` for a run by hand.
EXAMPLES = int(os.environ.get("REFSTORE_FUZZ_EXAMPLES", "0")) or None
#: Seconds one case may take (open, list, read); the budgets below keep honest cases far under it.
TIME_BOUND = 2.0
#: Bytes one case may allocate at its peak (Python and numpy allocations, traced).
MEMORY_BOUND = 256 << 20

DATA_URL = "memory://fuzz/data.bin"
DATA = bytes(range(256)) * 16
POLICY = refstore.URLPolicy.allow("memory://fuzz/", protocols=["memory"])
META_NAMES = (".zarray", ".zgroup", ".zattrs", "zarr.json")
#: Errors a read of an opened manifest may raise besides refstore's own.
MISSING = (KeyError, FileNotFoundError)


def fuzz_settings(examples: int) -> settings:
    """Settings of a fuzz property: *examples* cases (or ``REFSTORE_FUZZ_EXAMPLES``), derandomized,
    no example database, our own time bound instead of hypothesis's deadline."""
    return settings(
        max_examples=EXAMPLES or examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def put_data() -> None:
    """Write the bytes every reference of the strategies points into, and warm up.

    The first open of each kind imports (pyarrow, zarr's codecs, fsspec's loop) and
    would take the first case past :data:`TIME_BOUND`; a valid manifest of each
    kind is opened and read here first.
    """
    fsspec.filesystem("memory").pipe_file(DATA_URL, DATA)
    refs = {".zgroup": '{"zarr_format": 2}', "a/.zarray": json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [1], "dtype": "<f4", "compressor": None,
        "filters": None, "fill_value": 0, "order": "C"}), "a/0": [DATA_URL, 0, 4], "a/1": "base64:AAAAAA=="}
    manifest = refstore.Manifest.from_dict(refs)
    manifest.save("memory://fuzz/warm.parq")
    for warm in (manifest, refstore.Manifest.open("memory://fuzz/warm.parq")):
        exercise(warm, ["a/0"])


@contextmanager
def tight_budgets() -> Iterator[None]:
    """Budgets small enough that what they admit runs within :data:`TIME_BOUND`.

    (The defaults admit 10 million generated keys, minutes of work; the property is
    that the budgets bound the cost, whatever they are set to.)
    """
    with budgets(max_generated_keys=20_000, min_inflate_allowance=8 << 20, max_inflate_ratio=200):
        yield


# -- values -----------------------------------------------------------------------------------

INTS = st.one_of(
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**40]),
)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=False), st.text(max_size=8))
WILD = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)

SEGMENTS = st.sampled_from([
    "a", "b", "c", "0", "1", "2", "10", "01", "00", "-1", ".", "..", "", " ", "c.0", "0.0", "0.1", "1.0",
    ".zarray", ".zgroup", ".zattrs", "zarr.json", ".zmetadata", "ü", "\x00", "\n", "a" * 300, "%2e%2e",
])
KEYS = st.one_of(
    st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join),
    st.text(max_size=10),
)
URLS = st.one_of(
    st.sampled_from([
        DATA_URL, DATA_URL, "memory://fuzz/missing.bin", None, "{{u}}/data.bin", "{{ u }}/data.bin",
        "{{nope}}/x", "{{u}", "{{u}}{{u}}{{u}}", "{{f(c='x')}}", "{{ 1 + 1 }}", "s3://bucket/x",
        "http://[::1", "", "file:///etc/passwd", "memory://fuzz/../secret", "memory://other/x",
        "memory://fuzz/" + "x" * 9000,
    ]),
    st.text(max_size=10),
)
REFERENCES = st.one_of(
    st.tuples(URLS).map(list),
    st.tuples(URLS, INTS, INTS).map(list),
    st.tuples(URLS, st.integers(0, 4000), st.integers(0, 300)).map(list),
    st.lists(WILD, max_size=5),
)
INLINE = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12).map(lambda b: "base64:" + base64.b64encode(b).decode()),
    st.text(max_size=12).map(lambda t: "base64:" + t),
)
VALUES = st.one_of(REFERENCES, REFERENCES, INLINE, WILD)


# -- metadata ---------------------------------------------------------------------------------

DIMS = st.one_of(st.lists(st.integers(-1, 9), max_size=3), st.lists(INTS, max_size=3), WILD)
CHUNKS = st.one_of(st.lists(st.integers(-1, 4), max_size=3), st.lists(INTS, max_size=3), WILD)
SEPARATORS = st.sampled_from([".", "/", None, "", "-", 0, "//"])

ZARRAY = st.fixed_dictionaries(
    {
        "zarr_format": st.sampled_from([2, 2, 3, "2", None]),
        "shape": DIMS,
        "chunks": CHUNKS,
        "dtype": st.sampled_from(["<f4", "|u1", "<i8", "junk", 5]),
        "compressor": st.none(),
        "fill_value": st.sampled_from([0, None, "NaN", 1e300]),
        "order": st.sampled_from(["C", "F", 7]),
        "filters": st.none(),
    },
    optional={"dimension_separator": SEPARATORS, "extra": WILD},
)
ZARR_JSON = st.fixed_dictionaries(
    {
        "zarr_format": st.sampled_from([3, 3, 2]),
        "node_type": st.sampled_from(["array", "array", "group", None, 3]),
        "shape": DIMS,
        "data_type": st.sampled_from(["float32", "uint8", "junk"]),
        "chunk_grid": st.one_of(
            st.fixed_dictionaries({
                "name": st.sampled_from(["regular", "regular", "rectilinear", 1]),
                "configuration": st.one_of(st.fixed_dictionaries({"chunk_shape": CHUNKS}), WILD),
            }),
            WILD,
        ),
        "fill_value": st.sampled_from([0, None]),
        "codecs": st.just([{"name": "bytes", "configuration": {"endian": "little"}}]),
    },
    optional={
        "chunk_key_encoding": st.one_of(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["default", "v2", "other", None])},
                optional={"configuration": st.one_of(st.fixed_dictionaries({"separator": SEPARATORS}), WILD)},
            ),
            WILD,
        ),
        "attributes": WILD,
    },
)


def _metadata_value(doc: Any) -> st.SearchStrategy[Any]:
    """The forms a metadata entry takes: JSON text, an object, base64 JSON, a reference, junk."""
    text = json.dumps(doc)
    return st.sampled_from([
        text, text, doc, "base64:" + base64.b64encode(text.encode()).decode(), [DATA_URL, 0, 64],
        text[: len(text) // 2], "[1, 2]",
    ])


def _grid(meta: dict[str, Any]) -> list[int] | None:
    """The chunk grid *meta* declares, if its shape and chunks are small sane integers."""
    shape = meta.get("shape")
    if "chunks" in meta:
        chunks = meta["chunks"]
    else:
        grid = meta.get("chunk_grid")
        conf = grid.get("configuration") if isinstance(grid, dict) else None
        chunks = conf.get("chunk_shape") if isinstance(conf, dict) else None
    if not (isinstance(shape, list) and isinstance(chunks, list) and len(shape) == len(chunks)):
        return None
    if not all(type(n) is int and 0 <= n < 50 for n in shape) or not all(type(c) is int and c > 0 for c in chunks):
        return None
    return [-(-s // c) for s, c in zip(shape, chunks)]


def _chunk_keys(prefix: str, meta: dict[str, Any], v3: bool) -> list[str]:
    grid = _grid(meta)
    if grid is None or len(list(itertools.product(*map(range, grid)))) > 64:
        return []
    sep = meta.get("dimension_separator") or "."
    if v3:
        enc = meta.get("chunk_key_encoding") or {}
        conf = enc.get("configuration") if isinstance(enc, dict) else None
        sep = conf.get("separator", "/") if isinstance(conf, dict) else "/"
    sep = sep if isinstance(sep, str) else "."
    head = f"{prefix}/" if prefix else ""
    keys = []
    for idx in itertools.product(*map(range, grid)):
        body = sep.join(map(str, idx)) if idx else ("c" if v3 else "0")
        keys.append(head + (f"c{sep}{body}" if v3 and idx else body))
    return keys


@st.composite
def arrays(draw: Any) -> dict[str, Any]:
    """The entries of one array: metadata (v2, v3 or both) and references under its chunk keys."""
    prefix = draw(st.sampled_from(["", "a", "a/b", "c", "a/0", "a/c", "x y", "0"]))
    head = f"{prefix}/" if prefix else ""
    out: dict[str, Any] = {}
    keys: list[str] = []
    kinds = draw(st.sampled_from([("v2",), ("v2",), ("v3",), ("v3",), ("v2", "v3")]))
    for kind in kinds:
        meta = draw(ZARRAY if kind == "v2" else ZARR_JSON)
        out[head + (".zarray" if kind == "v2" else "zarr.json")] = draw(_metadata_value(meta))
        keys += _chunk_keys(prefix, meta, kind == "v3")
    for key in keys:
        if draw(st.integers(0, 9)):
            out[key] = draw(st.sampled_from([[DATA_URL, 0, 16], ["{{u}}/data.bin", 16, 16]]) | VALUES)
    return out


GEN_EXPRESSIONS = st.sampled_from([
    "i", "i", "i * 16", "(i + 1) * 16", "i ** 64", "9 ** 9 ** 9", "(i", "__import__('os')",
    "'%09d' % i", "'%0999999d' % i", "i / 0", "i // 0", "-" * 40 + "i", "f(c='x')", "u", "nope",
    "'a' * 10000", "i.real", "[i]", "i if i else 1", "lambda: 1", "10 ** 300", "'x' + u",
])
DIMENSIONS = st.one_of(
    st.fixed_dictionaries(
        {"stop": st.one_of(st.integers(-2, 50), INTS)},
        optional={"start": INTS, "step": st.one_of(st.integers(-3, 3), INTS)},
    ),
    st.lists(st.integers(-2, 50), max_size=5),
    WILD,
)
GENS = st.fixed_dictionaries(
    {
        "key": st.one_of(GEN_EXPRESSIONS.map(lambda e: "g/{{" + e + "}}"), st.just("g/{{i}}"), KEYS),
        "url": st.one_of(st.just("memory://fuzz/data.bin"), GEN_EXPRESSIONS.map(lambda e: "memory://fuzz/{{" + e + "}}")),
        "dimensions": st.one_of(st.dictionaries(st.sampled_from(["i", "j", "u"]), DIMENSIONS, max_size=2), WILD),
    },
    optional={
        "offset": GEN_EXPRESSIONS.map(lambda e: "{{" + e + "}}"),
        "length": st.one_of(st.just("16"), GEN_EXPRESSIONS.map(lambda e: "{{" + e + "}}")),
    },
)
TEMPLATES = st.one_of(
    st.fixed_dictionaries({"u": st.just("memory://fuzz")}, optional={
        "v": st.sampled_from(["{{u}}/x", "{{v}}", "{{w}}", "{{c}}", "x" * 9000, "{{u}}" * 10]),
        "w": st.one_of(st.text(max_size=6), WILD),
    }),
    st.dictionaries(st.text(max_size=4), WILD, max_size=3),
)


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    """A kerchunk reference document, version 0 or 1, valid in shape and hostile in its values."""
    refs: dict[str, Any] = {}
    if draw(st.booleans()):
        refs[".zgroup"] = draw(st.sampled_from(['{"zarr_format": 2}', {"zarr_format": 2}, "nope", "[]"]))
    for part in draw(st.lists(arrays(), max_size=3)):
        refs.update(part)
    refs.update(draw(st.dictionaries(KEYS, VALUES, max_size=5)))
    version = draw(st.sampled_from([1, 1, 1, 0, None, "1", 2, True]))
    if version == 0:
        return refs
    doc: dict[str, Any] = {"version": version, "refs": draw(st.just(refs) | WILD.map(lambda w: w or refs))}
    if draw(st.booleans()):
        doc["templates"] = draw(TEMPLATES)
    if draw(st.integers(0, 2)) == 0:
        doc["gen"] = draw(st.lists(GENS, max_size=2) | WILD)
    if version is None:
        del doc["version"]
    return doc


def _opens(doc: Any) -> bool:
    try:
        with tight_budgets():
            refstore.Manifest.from_dict(json.loads(json.dumps(doc)))
    except (ManifestError, TypeError, ValueError):  # (json cannot write a non-text key)
        return False
    return True


@st.composite
def valid_documents(draw: Any) -> dict[str, Any]:
    """Documents that :meth:`Manifest.from_dict` opens: a hostile document, or what of it opens.

    A document that is refused keeps the entries that open on their own (metadata
    first), then those that open together; the result always opens.
    """
    doc = draw(documents())
    if _opens(doc):
        return doc
    body = doc.get("refs") if isinstance(doc, dict) and "version" in doc else doc
    templates = {"u": "memory://fuzz"}
    kept: dict[str, Any] = {}
    if isinstance(body, dict):
        for key in sorted(body, key=lambda k: not str(k).endswith(META_NAMES)):
            trial = {**kept, key: body[key]}
            if _opens({"version": 1, "templates": templates, "refs": trial}):
                kept = trial
    return {"version": 1, "templates": templates, "refs": kept}


# -- byte mutations ---------------------------------------------------------------------------


@st.composite
def mutated(draw: Any, data: bytes) -> bytes:
    """*data* with a few bytes flipped, cut, repeated or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat", "truncate"]))
        at = draw(st.integers(0, max(0, len(out) - 1)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[at] = draw(st.sampled_from(b'{}[]",:\\0 \xff\x00\x80e-9'))
        elif op == "cut":
            del out[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            out[at:at] = draw(st.sampled_from([b"{", b"}", b'"', b",", b"[", b"\\u", b"\xc3", b"9" * 30, b"null",
                                               b'"a":', b"\x00"]))
        elif op == "repeat":
            n = draw(st.integers(1, 200))
            out[at:at] = out[at : at + n] * draw(st.integers(1, 3))
        else:
            del out[at:]
    return bytes(out)


# -- the property -----------------------------------------------------------------------------


@dataclass
class Tally:
    """What a fuzz run saw, printed at the end of a run by hand."""

    cases: int = 0
    opened: int = 0
    refused: int = 0
    read_errors: int = 0
    slowest: float = 0.0
    peak: int = 0
    messages: set[str] = field(default_factory=set)

    def note(self, exc: BaseException) -> None:
        """Keep the kind of message (digits dropped) of an error seen, up to 60 kinds."""
        if len(self.messages) < 60:
            self.messages.add(type(exc).__name__ + ": " + re.sub(r"\d+", "N", str(exc))[:50])


TALLY = Tally()


def exercise(manifest: refstore.Manifest, hints: list[str]) -> None:
    """List and read *manifest* through the manifest, ``ReferenceStore`` and ``ReferenceFileSystem``.

    Raises
    ------
    AssertionError
        If an error other than refstore's or ``KeyError``/``FileNotFoundError`` escapes,
        or if the faces disagree with the manifest.
    """
    # (a lazy parquet manifest reads its partitions now: a corrupt one raises ManifestError)
    keys = _only_ours(lambda: list(itertools.islice(manifest.keys(), 200)))
    if keys is None:
        keys = []
    _only_ours(lambda: len(manifest))
    probes = keys[:12] + [k for k in hints if isinstance(k, str)][:8]
    for key in probes:
        _only_ours(lambda k=key: manifest.get(k))
        _only_ours(lambda k=key: k in manifest)
    _, dirs = _only_ours(lambda: manifest.list_dir("")) or ([], [])
    for d in dirs[:4]:
        _only_ours(lambda d=d: manifest.list_dir(d))
        _only_ours(lambda d=d: manifest.is_dir(d))
    if len(keys) < 200:
        _only_ours(lambda: _round_trip(manifest))
    store = refstore.ReferenceStore(manifest, url_policy=POLICY)
    for key in probes[:8]:
        _only_ours(lambda k=key: store.get_sync(k))
    listed = _only_ours(lambda: asyncio.run(_listing(store)))
    if listed is not None and len(keys) < 200:
        assert sorted(listed) == sorted(keys), "the store lists other keys than the manifest"
    fs = refstore.ReferenceFileSystem(fo=manifest, url_policy=POLICY, skip_instance_cache=True)
    _only_ours(lambda: fs.ls("", detail=False))
    for key in probes[:6]:
        _only_ours(lambda k=key: fs.cat_file(k))


async def _listing(store: refstore.ReferenceStore) -> list[str]:
    return [k async for k in store.list()]


def _round_trip(manifest: refstore.Manifest) -> None:
    """``to_dict`` and pickling give the same entries back."""
    again = refstore.Manifest.from_dict(manifest.to_dict())
    assert dict(again.items()) == dict(manifest.items()), "to_dict does not give the same entries back"
    assert dict(pickle.loads(pickle.dumps(manifest)).items()) == dict(manifest.items()), "pickling changed it"


def _only_ours(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (RefstoreError, *MISSING) as exc:
        TALLY.read_errors += 1
        TALLY.note(exc)
        return None


def check_opens(open_it: Callable[[], refstore.Manifest], hints: list[str] | None = None) -> refstore.Manifest | None:
    """The fuzz property for one input: it opens (and reads only with refstore's errors) or it
    raises :class:`ManifestError`; in under :data:`TIME_BOUND` seconds and :data:`MEMORY_BOUND` bytes.

    Returns the manifest, or None if the input was refused.
    """
    TALLY.cases += 1
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with tight_budgets():
            try:
                manifest = open_it()
            except ManifestError as exc:
                TALLY.refused += 1
                TALLY.note(exc)
                return None
            TALLY.opened += 1
            exercise(manifest, hints or [])
            return manifest
    finally:
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        TALLY.slowest, TALLY.peak = max(TALLY.slowest, took), max(TALLY.peak, peak)
        assert took < TIME_BOUND, f"a case took {took:.2f} s"
        assert peak < MEMORY_BOUND, f"a case allocated {peak >> 20} MiB"
