"""cora.serve.parity and `cora check parity --served`: the served model == ONNX Runtime on the same file."""

import pytest

from cora.cli import main
from cora.export.parity import ParityError, default_cases
from cora.runtime.onnx import OnnxDetector
from cora.serve.parity import served_parity
from tests.serve.served import served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return served(tmp_path_factory)


def test_cora_check_parity_served(server, capsys):
    assert main(["check", "parity", str(server.exported.path), "--ks", "1", "7", "--batch", "2",
                 "--served", server.endpoints["http"], "--protocol", "http"]) == 0
    out = capsys.readouterr().out
    assert "parity ok" in out and f"served parity ok: {server.endpoints['http']} (http)" in out


def test_a_different_model_fails(server):
    """Negative control: a reference that resizes differently (min / max size 96 / 144) is not the served model."""
    cases = default_cases(server.exported.meta, ks=(7,), batch=2)
    assert served_parity(server.exported.path, server.endpoints["grpc"], cases)
    other = OnnxDetector(server.exported.path, min_size=96, max_size=144)
    with pytest.raises(ParityError):
        served_parity(server.exported.path, server.endpoints["grpc"], cases, reference=other)
