"""The served detector against ONNX Runtime: a real Triton server (`cora serve`, tests/serve/served.py) on the
tiny export, real HTTP and gRPC requests, `cora.runtime.triton.TritonDetector` and raw KServe v2 requests,
compared with `OnnxDetector` on the same files; bad requests; dynamic batching; no leak over a long run."""

import io
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from cora.errors import UserError
from cora.runtime.onnx import OnnxDetector, OnnxTextEncoder
from cora.runtime.triton import TritonDetector
from cora.serve.server import TritonInstall, TritonServer
from tests.serve.served import LIMITS, processes_using, served

pytestmark = pytest.mark.slow

NAMES = ["cat", "dog", "traffic light"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return served(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(server):
    # No text cache: the server's text model shares the session's cache folder, so a cached reference would
    # read back what the server wrote.
    return OnnxDetector(server.exported.path, text_encoder=OnnxTextEncoder(server.exported.text_encoder, cache=False))


def images(seed=0, sizes=((150, 200), (240, 180))):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def assert_equal_detections(got, ref, allow_empty=False):
    """Image by image, slot by slot: the server runs the same file through the same runtime."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert allow_empty or len(r["labels"]) > 0
        assert torch.equal(g["labels"], r["labels"])
        torch.testing.assert_close(g["boxes"], r["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(g["scores"], r["scores"], rtol=0, atol=1e-6)


def each(reference, imgs, **kw):
    """The reference image by image: a request's answer must not depend on the other images of its batch."""
    return [reference.detect([i], **kw)[0] for i in imgs]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_detect_equals_onnx_runtime(server, reference, protocol):
    detector = TritonDetector(server.endpoints[protocol], protocol=protocol)
    imgs = images()
    text = reference.encode_vocabulary(NAMES)
    prior = np.linspace(0.5, 2, len(NAMES)).astype(np.float32)
    ref = each(reference, imgs, text_embeddings=text, class_prior=prior)
    assert_equal_detections(detector.detect(imgs, text_embeddings=text, class_prior=prior), ref)
    assert_equal_detections(detector.detect(imgs, vocabulary=", ".join(NAMES), class_prior=prior), ref)
    # negative control: the classes in another order give other labels
    other = detector.detect(imgs, text_embeddings=text[::-1].copy(), class_prior=prior)
    assert any(not torch.equal(o["labels"], r["labels"]) for o, r in zip(other, ref))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cora_detect_takes_a_served_model(server, reference, protocol, tmp_path):
    """`cora detect --checkpoint grpc://HOST:PORT` (cora.runtime.load_detector) runs the served model: its JSON
    holds what OnnxDetector returns for the same image file, slot by slot."""
    import json

    from cora.cli import main
    from cora.io import image_tensor, read_image

    path = tmp_path / "photo.png"
    path.write_bytes(png(images()[0]))
    url = f"{protocol}://{server.endpoints[protocol]}"
    assert main(["detect", str(path), "--vocab", ",".join(NAMES), "--checkpoint", url, "--score-threshold", "0",
                 "--out", str(tmp_path / "out")]) == 0
    got = json.loads((tmp_path / "out" / "photo.json").read_text())["detections"]
    (ref,) = reference.detect([image_tensor(read_image(path))], vocabulary=NAMES)
    assert len(got) == len(ref["labels"]) > 0
    for d, box, score, label in zip(got, ref["boxes"].tolist(), ref["scores"].tolist(), ref["labels"].tolist()):
        # the JSON keeps boxes to 0.01 px and scores to 1e-5 (cora.io.write_detections_json)
        assert d["label"] == label and abs(d["score"] - score) <= 6e-6
        assert max(abs(a - b) for a, b in zip(d["box"], box)) <= 0.006


def test_encoded_images_and_label_names(server, reference):
    imgs = images(1)
    files = [png(i) for i in imgs]
    decoded = [torch.from_numpy(np.asarray(Image.open(io.BytesIO(f)).convert("RGB")).copy()).permute(2, 0, 1) / 255.0
               for f in files]
    ref = each(reference, decoded, vocabulary=NAMES)
    detector = TritonDetector(server.endpoints["grpc"])
    assert_equal_detections(detector.detect(files, vocabulary=NAMES), ref)
    # a raw KServe v2 request of two rows: padded outputs, labels -1 and empty names in the padding
    client = httpclient.InferenceServerClient(server.endpoints["http"])
    inputs = [httpclient.InferInput("image", [2, 1], "BYTES"), httpclient.InferInput("class_names", [2, 3], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[f] for f in files], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[n.encode() for n in NAMES]] * 2, dtype=np.object_))
    result = client.infer("cora", inputs)
    labels, names = result.as_numpy("labels"), result.as_numpy("label_names")
    for j, r in enumerate(ref):
        m = len(r["labels"])
        assert labels[j, :m].tolist() == r["labels"].tolist() and (labels[j, m:] == -1).all()
        assert [n.decode() for n in names[j, :m]] == [NAMES[c] for c in r["labels"].tolist()]
        assert all(n == b"" for n in names[j, m:])
        np.testing.assert_allclose(result.as_numpy("boxes")[j, :m], r["boxes"].numpy(), rtol=0, atol=1e-4)


def test_text_model_equals_the_text_encoder(server):
    encoder = OnnxTextEncoder(server.exported.text_encoder, cache=False)  # computed here, not read back
    names = ["zebra", "red car", "cat"]
    served_text = TritonDetector(server.endpoints["http"], protocol="http").encode_vocabulary(names)
    np.testing.assert_allclose(served_text, encoder(names), rtol=0, atol=1e-6)
    assert not np.allclose(served_text[0], served_text[1])  # negative control: names differ, embeddings differ


def statistics(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    """(images inferred, model executions) of the detector so far (Triton's statistics API)."""
    s = client.get_inference_statistics("cora", as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_concurrent_requests_with_different_vocabularies_share_batches(server, reference):
    """16 clients at once, 4 vocabularies: Triton batches them (fewer executions than images) and the model
    groups them by vocabulary; every answer equals the reference of its own image and vocabulary."""
    g = torch.Generator().manual_seed(3)
    vocabularies = [torch.nn.functional.normalize(torch.randn(k, 64, generator=g), dim=-1).numpy() for k in (1, 3, 7, 12)]
    imgs = images(4, sizes=[(128, 160)] * 16)
    client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
    before = statistics(client)
    results, barrier = [None] * 16, threading.Barrier(16)

    def send(i):
        detector = TritonDetector(server.endpoints["grpc"])
        barrier.wait()
        results[i] = detector.detect([imgs[i]], text_embeddings=vocabularies[i % 4])[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inferred, executions = (a - b for a, b in zip(statistics(client), before))
    assert inferred == 16 and executions < 16, (inferred, executions)
    for i in range(16):
        assert_equal_detections([results[i]], each(reference, [imgs[i]], text_embeddings=vocabularies[i % 4]),
                                allow_empty=True)
    assert sum(len(r["labels"]) > 0 for r in results) >= 8


def raw(name, array, dtype):
    i = grpcclient.InferInput(name, list(array.shape), dtype)
    i.set_data_from_numpy(array)
    return i


def bad_requests():
    """(inputs, words the error must contain): each input is wrong in one way."""
    image = raw("image_float", np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32), "FP32")
    names = raw("class_names", np.array([[b"cat", b"dog"]], dtype=np.object_), "BYTES")
    text = np.random.default_rng(1).standard_normal((1, 2, 64)).astype(np.float32)
    nan_text = text.copy()
    nan_text[0, 1, 3] = np.nan
    big = io.BytesIO()
    Image.new("RGB", (LIMITS["max_image_side"] + 1, 8)).save(big, "PNG")
    huge = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(huge, "PNG")
    assert len(huge.getvalue()) > LIMITS["max_image_bytes"]
    return [
        ([image], "give exactly one of the inputs class_names"),
        ([names], "give exactly one of the inputs image"),
        ([image, names, raw("text_embeddings", text, "FP32")], "give exactly one of the inputs class_names"),
        ([raw("image_float", np.zeros((1, 3, 64, 64)), "FP64"), names], "image_float"),                 # dtype
        ([raw("image_float", np.zeros((1, 64, 64), np.float32), "FP32"), names], "image_float"),        # rank
        ([raw("image_float", np.full((1, 3, 64, 64), 255, np.float32), "FP32"), names], "image_float"),  # range
        ([raw("image_float", np.zeros((1, 3, 600, 8), np.float32), "FP32"), names], "image_float"),     # size
        ([image, raw("class_names", np.zeros((1, 0), dtype=np.object_), "BYTES")], "class_names"),      # K = 0
        ([image, raw("class_names", np.array([[b"cat", b"  "]], dtype=np.object_), "BYTES")], "class_names[1] is empty"),
        ([image, raw("class_names", np.array([[b"x%d" % i for i in range(65)]], dtype=np.object_), "BYTES")],
         "class_names must hold 1 to 64"),
        ([image, raw("class_names", np.array([[b"\xff\xfe"]], dtype=np.object_), "BYTES")], "not UTF-8"),
        ([image, raw("text_embeddings", nan_text, "FP32")], "text_embeddings"),                         # NaN
        ([image, raw("text_embeddings", text[:, :, :32].copy(), "FP32")], "text_embeddings"),           # wrong D
        ([image, names, raw("class_prior", np.array([[1.0, -1.0]], np.float32), "FP32")], "class_prior"),
        ([image, names, raw("class_prior", np.ones((1, 3), np.float32), "FP32")], "class_prior"),
        ([raw("image", np.array([[b"not an image"]], dtype=np.object_), "BYTES"), names], "image cannot be decoded"),
        ([raw("image", np.array([[big.getvalue()]], dtype=np.object_), "BYTES"), names], "pixels a side"),
        ([raw("image", np.array([[huge.getvalue()]], dtype=np.object_), "BYTES"), names], "bytes, over the limit"),
    ]


def test_bad_requests_get_one_clear_error_and_the_server_stays_up(server, reference):
    client = grpcclient.InferenceServerClient(server.endpoints["grpc"])
    for inputs, words in bad_requests():
        with pytest.raises(InferenceServerException) as error:
            client.infer("cora", inputs)
        assert words in error.value.message(), (words, error.value.message())
    assert server.process.poll() is None and client.is_server_live() and client.is_model_ready("cora")
    # TritonDetector raises the server's message as a UserError
    with pytest.raises(UserError, match="class_names must hold 1 to 64"):
        TritonDetector(server.endpoints["grpc"]).detect(images()[:1], vocabulary=[f"c{i}" for i in range(65)])
    imgs = images(5)
    assert_equal_detections(TritonDetector(server.endpoints["grpc"]).detect(imgs, vocabulary=NAMES),
                            each(reference, imgs, vocabulary=NAMES))


def rss_kib(pids) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_memory_stays_flat_over_changing_vocabularies(server):
    """100 requests, a new vocabulary (size and values) and image size in each: the server and its model
    processes grow by less than 16 MiB after a warm-up of the same traffic. The text cache's bound itself
    is tested in test_backend.py (here names would cost ~0.3 s each to encode)."""
    detector = TritonDetector(server.endpoints["grpc"])
    rng = np.random.default_rng(0)

    def traffic(n):
        for i in range(n):
            k = int(rng.integers(1, LIMITS["max_classes"] + 1))
            h, w = (int(v) for v in rng.integers(32, 256, 2))
            detector.detect([torch.rand(3, h, w)], text_embeddings=rng.standard_normal((k, 64)).astype(np.float32))

    traffic(30)
    pids = processes_using(server.repository)
    before = rss_kib(pids)
    traffic(100)
    growth = rss_kib(pids) - before
    assert growth < 16 * 1024, f"grew by {growth} KiB"


def test_a_port_in_use_is_one_line_naming_it(server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as error:
            TritonServer(server.repository, http_port=port).start()
    assert f"127.0.0.1:{port}' already in use" in str(error.value) and "\n" not in str(error.value)
    assert "CudaDriverHelper" not in str(error.value)


def test_a_missing_install_and_a_folder_without_models_are_one_line_errors(tmp_path, server):
    with pytest.raises(UserError, match="not installed under .*make build"):
        TritonInstall.find(tmp_path)
    with pytest.raises(UserError, match="is not a Triton model repository"):
        TritonServer(tmp_path)
    assert TritonServer(server.repository).install.binary.is_file()  # the real install is complete
