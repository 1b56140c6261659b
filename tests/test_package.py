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
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RefstoreError)


def test_errors_pickle():
    err = errors.ReferenceNotReachable("a/0", "s3://b/k", FileNotFoundError("gone"))
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and "a/0" in str(back) and "s3://b/k" in str(back)
    refused = errors.URLNotAllowed("/etc/passwd", "no local files", key="k")
    assert str(pickle.loads(pickle.dumps(refused))) == str(refused)


def test_lower_layers_never_import_a_layer_above() -> None:
    """Arrows point down (shared DESIGN.md): manifest, fetch, codecs and virtual never import the engine
    or a face, not even lazily inside a function."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "refstore"
    above = ("refstore.store", "refstore.fs", "refstore._engine", "refstore._reader", "refstore.pipeline",
             "refstore.cli", "refstore.build")
    found = []
    for layer in ("manifest", "fetch", "codecs", "virtual"):
        for path in sorted((root / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(above) or n == "refstore"]
    assert found == []
