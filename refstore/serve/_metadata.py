"""Metadata translation: every served node's documents in both zarr formats, sharing chunk keys.

An array's source documents (zarr 2 ``.zarray``/``.zattrs`` or zarr 3 ``zarr.json``) become
one *served* encoding, written both ways: ``.zarray``/``.zattrs`` and a ``zarr.json`` with
zarr 2's chunk key encoding (``{"name": "v2"}``), so clients of either format read the same
chunk keys and bytes. Arrays whose codecs every zarr client reads (none, gzip, zstd, blosc;
C or F order) keep them and their chunks pass through; the others are marked for
transcoding (:mod:`refstore.serve._transcode`) to the codec the dataset is configured with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refstore.virtual._source import DIMENSIONS_ATTR, chunk_key_parser, json_fill, xarray_fill_attr

__all__ = ["PORTABLE", "ServedArray", "ServedGroup", "consolidated", "translate_array", "translate_group"]

#: Compressors both zarr formats name the same way and every zarr client decodes.
PORTABLE = ("gzip", "zstd", "blosc")
_BLOSC_SHUFFLE = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}
_SHUFFLE_ID = {v: k for k, v in _BLOSC_SHUFFLE.items()}
_NUMERIC = "biufc"


@dataclass(frozen=True)
class Compressor:
    """A compressor of the served encoding: its name and its zarr 3 configuration."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def v3(self) -> dict[str, Any]:
        """The zarr 3 codec document."""
        return {"name": self.name, "configuration": dict(self.config)}

    def v2(self, itemsize: int) -> dict[str, Any]:
        """The numcodecs (zarr 2) document."""
        if self.name != "blosc":
            return {"id": self.name, **self.config}
        c = self.config
        shuffle = _SHUFFLE_ID.get(c.get("shuffle", "shuffle"), 1)
        return {"id": "blosc", "cname": c.get("cname", "lz4"), "clevel": c.get("clevel", 5), "shuffle": shuffle,
                "blocksize": c.get("blocksize", 0)}


def make_compressor(name: str, level: int | None, itemsize: int) -> Compressor | None:
    """The compressor transcoded chunks are written with (``name`` from :data:`TRANSCODE_CODECS`)."""
    if name == "none":
        return None
    if name == "gzip":
        return Compressor("gzip", {"level": 1 if level is None else level})
    if name == "zstd":
        return Compressor("zstd", {"level": 3 if level is None else level, "checksum": False})
    return Compressor("blosc", {"cname": "zstd", "clevel": 5 if level is None else level,
                                "shuffle": "shuffle" if itemsize > 1 else "bitshuffle", "typesize": itemsize, "blocksize": 0})


def _from_v2(doc: Mapping[str, Any] | None, itemsize: int) -> Compressor | bool | None:
    """A numcodecs compressor document as a :class:`Compressor`; None if absent; False if not portable."""
    if doc is None:
        return None
    cid = doc.get("id")
    if cid == "gzip":
        return Compressor("gzip", {"level": int(doc.get("level", 1))})
    if cid == "zstd":
        return Compressor("zstd", {"level": int(doc.get("level", 0)), "checksum": bool(doc.get("checksum", False))})
    if cid == "blosc":
        shuffle = int(doc.get("shuffle", 1))
        name = _BLOSC_SHUFFLE.get(shuffle, "shuffle" if itemsize > 1 else "bitshuffle")
        return Compressor("blosc", {"cname": doc.get("cname", "lz4"), "clevel": int(doc.get("clevel", 5)),
                                    "shuffle": name, "typesize": itemsize, "blocksize": int(doc.get("blocksize", 0))})
    return False


def _from_v3(doc: Any, itemsize: int) -> Compressor | bool:
    """A zarr 3 bytes-to-bytes codec document as a :class:`Compressor`, or False if not portable."""
    name, config = (doc, {}) if isinstance(doc, str) else (doc.get("name"), dict(doc.get("configuration") or {}))
    if name == "gzip":
        return Compressor("gzip", {"level": int(config.get("level", 1))})
    if name == "zstd":
        return Compressor("zstd", {"level": int(config.get("level", 0)), "checksum": bool(config.get("checksum", False))})
    if name == "blosc":
        return Compressor("blosc", {"cname": config.get("cname", "lz4"), "clevel": int(config.get("clevel", 5)),
                                    "shuffle": config.get("shuffle", "shuffle"), "typesize": itemsize,
                                    "blocksize": int(config.get("blocksize", 0))})
    return False


@dataclass
class ServedGroup:
    """A group: its attributes, served as ``.zgroup`` + ``.zattrs`` and ``zarr.json``."""

    path: str
    attributes: dict[str, Any]

    def docs(self) -> dict[str, dict[str, Any]]:
        """The metadata documents by name (OME-NGFF 0.4 attributes for zarr 2, 0.5 for zarr 3)."""
        return {
            ".zgroup": {"zarr_format": 2},
            ".zattrs": ngff_attributes(self.attributes, 2),
            "zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": ngff_attributes(self.attributes, 3)},
        }


def ngff_attributes(attrs: Mapping[str, Any], zarr_format: int) -> dict[str, Any]:
    """*attrs* with OME-NGFF metadata in the version of *zarr_format*: 0.4 (``multiscales`` at the top,
    each with its ``version``) for zarr 2, 0.5 (under ``ome``, with one ``version``) for zarr 3."""
    out = dict(attrs)
    ome = out.get("ome")
    if zarr_format == 2 and isinstance(ome, Mapping) and "multiscales" in ome and "multiscales" not in out:
        rest = {k: v for k, v in ome.items() if k not in ("version", "multiscales")}
        out.pop("ome")
        out["multiscales"] = [{**m, "version": "0.4"} for m in ome["multiscales"]]
        out.update({k: v for k, v in rest.items() if k not in out})
    elif zarr_format == 3 and isinstance(out.get("multiscales"), list) and "ome" not in out:
        found = out.pop("multiscales")
        out["ome"] = {"version": "0.5", "multiscales": [{k: v for k, v in m.items() if k != "version"} for m in found]}
    return out


@dataclass
class ServedArray:
    """An array as served: source metadata, the served encoding, and the chunk key mapping.

    Attributes
    ----------
    path
        Its path in the dataset ("" for a root array).
    source_meta
        zarr's parsed source metadata (encodes source chunk keys; decodes for transcoding).
    transcode
        True when chunks are decoded and re-encoded on the way (the source's codecs are not portable).
    rewrap
        True when each chunk is a zlib stream served as gzip: the same deflate data in gzip's
        frame, found by decompressing once (no recompression); dtype and order stay the source's.
    dtype
        The served dtype (byte order included).
    fill
        The fill value as a numpy scalar (None: zarr 2's null).
    documents
        The served documents by name (``.zarray``, ``.zattrs``, ``zarr.json``); a format the
        array cannot be written in is left out.
    """

    path: str
    source_meta: Any
    transcode: bool
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    fill: Any
    order: str
    compressor: Compressor | None
    separator: str
    documents: dict[str, dict[str, Any]]
    parse: Callable[[str], tuple[int, ...] | None]
    source_codecs: list[str]
    rewrap: bool = False

    def docs(self) -> dict[str, dict[str, Any]]:
        """The metadata documents by name."""
        return self.documents

    @property
    def max_chunk_bytes(self) -> int:
        """Bytes of one decoded chunk: a bound of a stored chunk's size (give or take a compressor's header)."""
        n = self.dtype.itemsize
        for c in self.chunks:
            n *= c
        return n

    def source_key(self, coords: tuple[int, ...]) -> str:
        """The source's key (relative to the array) of chunk *coords*."""
        return str(self.source_meta.encode_chunk_key(coords))

    def describe(self) -> dict[str, Any]:
        """A summary for the JSON listing."""
        return {
            "path": self.path, "node_type": "array", "shape": list(self.shape), "chunks": list(self.chunks),
            "dtype": self.dtype.str, "source_codecs": self.source_codecs,
            "served_codecs": [self.compressor.name] if self.compressor else [],
            "transcoded": self.transcode, "rewrapped": self.rewrap, "zarr_formats": sorted(2 if n == ".zarray" else 3 for n in self.documents
                                                                  if n in (".zarray", "zarr.json")),
        }


def _v2_parser(separator: str, ndim: int) -> Callable[[str], tuple[int, ...] | None]:
    def parse(key: str) -> tuple[int, ...] | None:
        if ndim == 0:
            return () if key == "0" else None
        parts = key.split(separator)
        if len(parts) != ndim or not all(p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)

    return parse


def _codec_names(codecs: Any) -> list[str]:
    out = []
    for c in codecs or []:
        if c is None:
            continue
        out.append(c if isinstance(c, str) else str(c.get("name") or c.get("id")))
    return out


def translate_array(
    path: str, docs: Mapping[str, bytes], transcode_with: str, level: int | None, *, assembled: bool = False
) -> ServedArray:
    """The served form of the array whose source documents are *docs*.

    Parameters
    ----------
    path
        The array's path in the dataset.
    docs
        ``{"zarr.json": ...}`` or ``{".zarray": ..., ".zattrs": ...}`` as the source holds them.
    transcode_with, level
        The codec (and level) chunks are re-encoded with when the source's are not portable.
    assembled
        True for a virtual array, whose chunks the engine makes: uncompressed ones are
        compressed on the way too (nothing is passed through for them).

    Raises
    ------
    ValueError
        If the documents do not parse, naming the array.
    """
    from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata

    if any(b"imagecodecs_" in d for d in docs.values()):
        try:
            import imagecodecs.numcodecs

            imagecodecs.numcodecs.register_codecs(verbose=False)
        except ImportError:
            pass  # parsing then names the codec zarr lacks
    try:
        if "zarr.json" in docs:
            src = json.loads(docs["zarr.json"])
            meta: Any = ArrayV3Metadata.from_dict(dict(src))
            attrs = dict(src.get("attributes") or {})
            dims = src.get("dimension_names")
            fmt = 3
        else:
            src = json.loads(docs[".zarray"])
            attrs = json.loads(docs[".zattrs"]) if ".zattrs" in docs else {}
            meta = ArrayV2Metadata.from_dict({**src, "attributes": attrs})
            dims = attrs.get(DIMENSIONS_ATTR)
            fmt = 2
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"array {path!r}: its metadata does not parse ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(n) for n in meta.shape)
    chunks = tuple(int(n) for n in meta.chunks) if fmt == 2 else _regular_chunks(src)
    dtype, passthrough, order, compressor, source_codecs = _source_encoding(src, fmt)
    native_only = dtype is None or chunks is None or dtype.kind not in _NUMERIC
    if native_only:
        # strings, structured dtypes, irregular grids: served as the source has them, in its format only
        docs_out = {name: json.loads(data) for name, data in docs.items()}
        return ServedArray(path, meta, False, shape, chunks or (), np.dtype("V1") if dtype is None else dtype,
                           None, "C", None, "", docs_out, chunk_key_parser(meta), source_codecs)
    assert dtype is not None and chunks is not None
    if passthrough and assembled and compressor is None and transcode_with != "none":
        passthrough = False  # raw bytes the engine assembled: compress them on the way
    v2_codecs = [c for c in [*(src.get("filters") or []), src.get("compressor")] if c] if fmt == 2 else []
    rewrap = (not passthrough and not assembled and transcode_with == "gzip" and len(v2_codecs) == 1
              and v2_codecs[0].get("id") == "zlib")  # kerchunk writes HDF5's deflate as a zlib filter
    if rewrap:
        compressor = Compressor("gzip", {"level": int(v2_codecs[0].get("level", 1))})
    elif not passthrough:
        dtype = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
        order = "C"
        compressor = make_compressor(transcode_with, level, dtype.itemsize)
    raw_fill = meta.fill_value
    fill = None if raw_fill is None else np.asarray(raw_fill).astype(dtype)[()]
    if fmt == 2:
        separator = src.get("dimension_separator") or "."
    else:
        enc = src.get("chunk_key_encoding") or {}
        separator = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name", "default") == "default" else ".")
    names = list(dims) if dims is not None and all(isinstance(n, str) for n in dims) else None
    v2_attrs = {k: v for k, v in attrs.items() if k != DIMENSIONS_ATTR}
    v3_attrs = dict(v2_attrs)
    if fmt == 3:
        v2_attrs.pop("_FillValue", None)  # zarr 2's fill_value says it
    elif fill is not None:
        v3_attrs["_FillValue"] = xarray_fill_attr(fill)  # xarray masks zarr 3 arrays by this attribute only
    elif isinstance(v3_attrs.get("_FillValue"), float):
        v3_attrs["_FillValue"] = xarray_fill_attr(np.asarray(v3_attrs["_FillValue"]).astype(dtype)[()])
    if names is not None:
        v2_attrs[DIMENSIONS_ATTR] = names
    zarray = {
        "zarr_format": 2, "shape": list(shape), "chunks": list(chunks), "dtype": dtype.str,
        "fill_value": None if fill is None else json_fill(fill), "order": order, "filters": None,
        "compressor": compressor.v2(dtype.itemsize) if compressor else None, "dimension_separator": separator,
    }
    codecs: list[dict[str, Any]] = []
    if order == "F" and len(shape) > 1:
        codecs.append({"name": "transpose", "configuration": {"order": list(range(len(shape)))[::-1]}})
    codecs.append({"name": "bytes", "configuration": {"endian": "big" if dtype.byteorder == ">" else "little"}}
                  if dtype.itemsize > 1 else {"name": "bytes"})
    if compressor is not None:
        codecs.append(compressor.v3())
    zarr_json: dict[str, Any] = {
        "zarr_format": 3, "node_type": "array", "shape": list(shape), "data_type": _v3_type(dtype),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": separator}},
        "fill_value": json_fill(np.zeros((), dtype)[()] if fill is None else fill), "codecs": codecs,
        "attributes": v3_attrs,
    }
    if names is not None:
        zarr_json["dimension_names"] = names
    documents = {".zarray": zarray, ".zattrs": v2_attrs, "zarr.json": zarr_json}
    return ServedArray(path, meta, not passthrough, shape, chunks, dtype, fill, order, compressor, separator,
                       documents, _v2_parser(separator, len(shape)), source_codecs, rewrap)


def _v3_type(dtype: np.dtype[Any]) -> str:
    return "bool" if dtype.kind == "b" else dtype.newbyteorder("=").name


def _regular_chunks(doc: Mapping[str, Any]) -> tuple[int, ...] | None:
    grid = doc.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        return None
    return tuple(int(n) for n in grid["configuration"]["chunk_shape"])


def _source_encoding(
    doc: Mapping[str, Any], fmt: int
) -> tuple[np.dtype[Any] | None, bool, str, Compressor | None, list[str]]:
    """``(dtype, passthrough, order, compressor, codec names)`` of a source array document."""
    if fmt == 2:
        names = _codec_names(doc.get("filters")) + _codec_names([doc.get("compressor")])
        try:
            dtype = np.dtype(doc["dtype"]) if isinstance(doc["dtype"], str) else None
        except TypeError:
            dtype = None
        if dtype is None:
            return None, False, "C", None, names
        found = _from_v2(doc.get("compressor"), dtype.itemsize)
        ok = not doc.get("filters") and found is not False
        return dtype, ok, str(doc.get("order", "C")), found if isinstance(found, Compressor) else None, names
    codecs = list(doc.get("codecs") or [])
    names = _codec_names(codecs)
    try:
        dtype = np.dtype(doc["data_type"]) if isinstance(doc.get("data_type"), str) else None
    except TypeError:
        dtype = None
    if dtype is None:
        return None, False, "C", None, names
    order = "C"
    ndim = len(doc.get("shape", []))
    if codecs and _codec_names(codecs[:1]) == ["transpose"]:
        perm = list((codecs[0].get("configuration") or {}).get("order", []))
        if perm == list(range(ndim)):
            codecs = codecs[1:]
        elif perm == list(range(ndim))[::-1]:
            order, codecs = "F", codecs[1:]
    ok = bool(codecs) and _codec_names(codecs[:1]) == ["bytes"] and len(codecs) <= 2
    comp: Compressor | bool | None = None
    if ok:
        endian = (codecs[0].get("configuration") or {}).get("endian", "little") if isinstance(codecs[0], dict) else "little"
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder(">" if endian == "big" else "<")
        if len(codecs) == 2:
            comp = _from_v3(codecs[1], dtype.itemsize)
            ok = comp is not False
    return dtype, ok, order, comp if isinstance(comp, Compressor) else None, names


def translate_group(path: str, docs: Mapping[str, bytes]) -> ServedGroup:
    """The served form of a group (no documents: an implicit group with no attributes)."""
    attrs: dict[str, Any] = {}
    if "zarr.json" in docs:
        attrs = dict(json.loads(docs["zarr.json"]).get("attributes") or {})
    elif ".zattrs" in docs:
        attrs = dict(json.loads(docs[".zattrs"]))
    return ServedGroup(path, attrs)


def consolidated(nodes: Mapping[str, ServedArray | ServedGroup]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(.zmetadata, consolidated_metadata)``: zarr 2's consolidated document and zarr 3's inline one."""
    v2: dict[str, Any] = {}
    v3: dict[str, Any] = {}
    for path, node in nodes.items():
        base = f"{path}/" if path else ""
        docs = node.docs()
        for name in (".zgroup", ".zarray", ".zattrs"):
            if name in docs:
                v2[base + name] = docs[name]
        if path and "zarr.json" in docs:
            v3[path] = docs["zarr.json"]
    return (
        {"zarr_consolidated_format": 1, "metadata": v2},
        {"kind": "inline", "must_understand": False, "metadata": v3},
    )
