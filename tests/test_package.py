"""The public surface: a short, sorted, complete ``__all__``; errors subclass the builtins."""

from __future__ import annotations

import pickle

import fsspec.implementations.reference as fsspec_reference

import refstore
from refstore import errors


def test_all_is_sorted_and_complete():
    assert refstore.__all__ == sorted(refstore.__all__)
    classes = {n for n in dir(refstore) if not n.startswith("_") and n[0].isupper()}
    assert classes <= set(refstore.__all__)
    assert all(hasattr(refstore, name) for name in refstore.__all__)
    assert {"build", "multiscale", "concat", "stack", "pad", "save_virtual"} <= set(refstore.__all__)


def test_error_tree():
    assert issubclass(errors.ManifestError, ValueError)
    assert issubclass(errors.TemplateError, errors.ManifestError)
    for combine_error in (errors.UnknownDimension, errors.CoordinateOrderError, errors.InputsDiffer):
        assert issubclass(combine_error, errors.CombineError) and issubclass(combine_error, ValueError)
    assert issubclass(errors.InputsDiffer, errors.IncompatibleSources)
    assert refstore.virtual.IncompatibleSources is errors.IncompatibleSources
    assert issubclass(errors.KeyNotInManifest, FileNotFoundError)
    assert issubclass(errors.URLNotAllowed, PermissionError)
    assert issubclass(errors.ReferenceNotReachable, fsspec_reference.ReferenceNotReachable)
    assert issubclass(errors.ReferenceNotReachable, RuntimeError)
    assert issubclass(errors.DeadlineExceeded, errors.ReferenceNotReachable)
    assert issubclass(errors.DeadlineExceeded, TimeoutError)
    assert issubclass(errors.SourceChanged, errors.ReferenceNotReachable)
    assert issubclass(errors.SourceChanged, RuntimeError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RefstoreError)


#: Exceptions raised inside the fetch layer only: the reader turns each into a
#: ReferenceNotReachable (or DeadlineExceeded) naming key and URL, with it as ``__cause__``;
#: and CorruptSnapshot, which unpickling turns into a warning (then reopens the source) or
#: into SnapshotUnavailable.
INTERNAL_CAUSES = {"ShortRead", "TransientError", "FetchTimeout", "SlowAnswer", "SourceMismatch", "CorruptSnapshot"}


def test_one_tree_holds_every_error():
    """Every exception refstore defines is in ``refstore.errors``, drawn in its docstring and
    exported, or is an internal cause that never reaches a caller on its own."""
    import importlib
    import pkgutil

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(refstore.__path__, "refstore."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    outside = {path.rsplit(".", 1)[1] for path, cls in found.items() if not path.startswith("refstore.errors.")
               and not path.rsplit(".", 1)[1].startswith("_")}
    assert outside == INTERNAL_CAUSES
    for path, cls in found.items():
        if path.rsplit(".", 1)[1] in INTERNAL_CAUSES:
            assert not issubclass(cls, errors.RefstoreError), path
    tree = {path.rsplit(".", 1)[1] for path in found if path.startswith("refstore.errors.")}
    assert tree - {"_FsspecReferenceNotReachable"} == set(errors.__all__)
    for name in errors.__all__:
        assert f" {name}" in errors.__doc__, f"{name} is not drawn in refstore.errors' docstring"
        bases = getattr(errors, name).__mro__
        assert name == "RefstoreError" or any(b.__module__ == "builtins" and b not in (Exception, BaseException, object) for b in bases), name


def test_errors_pickle():
    err = errors.ReferenceNotReachable("a/0", "s3://b/k", FileNotFoundError("gone"))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and "a/0" in str(back) and "s3://b/k" in str(back)
    changed = errors.SourceChanged("a/0", "/data/x.nc", "etag", '"v1"', '"v2"')
    back = pickle.loads(pickle.dumps(changed))
    assert str(back) == str(changed) and (back.field, back.expected, back.found) == ("etag", '"v1"', '"v2"')
    refused = errors.URLNotAllowed("/etc/passwd", "no local files", key="k")
    assert str(pickle.loads(pickle.dumps(refused))) == str(refused)


def test_lower_layers_never_import_a_layer_above() -> None:
    """Arrows point down (shared DESIGN.md): manifest, fetch, codecs and virtual never import the engine
    or a face, not even lazily inside a function."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "refstore"
    above = ("refstore.store", "refstore.fs", "refstore._engine", "refstore._reader", "refstore.pipeline",
             "refstore.cli", "refstore.build", "refstore.serve")
    found = []
    for layer in ("manifest", "fetch", "codecs", "virtual"):
        for path in sorted((root / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(above) or n == "refstore"]
    assert found == []
