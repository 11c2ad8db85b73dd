"""cora.fileio: atomic writes."""

import json
import os

import pytest

from cora.fileio import write_json


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["a.json"]
