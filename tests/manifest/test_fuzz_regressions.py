"""Regression tests for what the manifest fuzzers found (tests/manifest/test_fuzz_*.py), one per bug."""

from __future__ import annotations

import io
import json

import pytest

from refstore import Manifest, ManifestError
from refstore.manifest._stream import load_json_stream


@pytest.mark.parametrize("value", [5, 0, -1, 256, True, 1.5])
def test_a_number_is_no_value(value):
    # int has a to_bytes method, so 5 was read as the inline byte b"\x05" (and -1 raised OverflowError)
    with pytest.raises(ManifestError, match=r"key 'k': unsupported value of type"):
        Manifest.from_dict({"version": 1, "refs": {"k": value}})


@pytest.mark.parametrize("refs", [{"": None}, {".": ""}, {"k": [[]]}])
def test_a_version_0_key_named_refs_streams_as_a_whole_parse_reads_it(refs):
    # without "version": 1 the top-level "refs" is a key of a version 0 manifest, whose value is
    # inline JSON; the streaming reader parsed it as version 1 refs and refused their entries
    text = json.dumps({"refs": refs}).encode()
    m = Manifest()
    if load_json_stream(m, io.BytesIO(text), block=5):
        assert dict(m.items()) == dict(Manifest.from_dict({"refs": refs}).items())
    assert json.loads(Manifest.from_dict(json.loads(text))["refs"]) == refs
