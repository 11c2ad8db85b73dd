"""A served CORA (`cora serve`, Triton Inference Server) with the `detect` API of `CORA.detect` and
`OnnxDetector`.

    det = TritonDetector("127.0.0.1:8001")                      # gRPC; protocol="http" for port 8000
    results = det.detect(images, vocabulary="cat, dog")         # the server embeds and caches the names
    results = det.detect(images, text_embeddings=emb)           # emb: [K, D]
    results = det.detect([open("a.jpg", "rb").read()], vocabulary=names)   # encoded images are sent as is

The server letterboxes, runs the graph and maps boxes back to the original pixels (cora.serve.detector_model,
through the same runtime as `cora detect`); each image is one request, so Triton's dynamic batcher can
batch them with other clients' requests. A request the server refuses raises UserError with its message.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cora.errors import UserError
from cora.preprocess import check_class_prior, check_text_embeddings, image_list
from cora.vocabulary import load_vocabulary

PROTOCOLS = ("grpc", "http")


class TritonDetector:
    """Args:
        url: "host:port" of the server's gRPC or HTTP endpoint (what `cora serve` prints).
        protocol: "grpc" or "http".
        model: the detector model's name in the repository (cora.export.triton.DETECTOR_MODEL).
        text_model: the text model's name (for `encode_vocabulary`).
        timeout: seconds per request.
    """

    def __init__(self, url: str, protocol: str = "grpc", model: str = "cora", text_model: str = "cora_text",
                 timeout: float = 60.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        self.client_module = client
        self.protocol, self.model, self.text_model, self.timeout = protocol, model, text_model, timeout
        self.device = "cpu"  # where detect's results and encode_vocabulary's embeddings come back
        # HTTP takes its timeouts per client, gRPC per request (client_timeout in _infer)
        self.client = client.InferenceServerClient(url) if protocol == "grpc" else \
            client.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        try:
            config = self.client.get_model_config(model)
        except Exception as e:
            raise UserError(f"no served model {model!r} at {url} ({protocol}): {e}") from None
        config = config.config if protocol == "grpc" else config
        inputs = {i["name"] if isinstance(i, dict) else i.name: i for i in _field(config, "input")}
        self.embed_dim = int(list(_field(inputs["text_embeddings"], "dims"))[-1])

    def _infer(self, model: str, tensors: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        c = self.client_module
        inputs = []
        for name, value in tensors.items():
            dtype = "BYTES" if value.dtype == np.object_ else np_to_triton_dtype(value.dtype)
            i = c.InferInput(name, list(value.shape), dtype)
            i.set_data_from_numpy(value)
            inputs.append(i)
        requested = [c.InferRequestedOutput(n) for n in outputs]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(model, inputs, outputs=requested, **kwargs)
        except InferenceServerException as e:
            raise UserError(f"{model}: {e.message()}") from None
        return {n: result.as_numpy(n) for n in outputs}

    def encode_vocabulary(self, vocabulary: str | Sequence[str]) -> np.ndarray:
        """Class names (see cora.vocabulary.load_vocabulary) -> [K, D] float32 from the served text model."""
        names = np.array([n.encode() for n in load_vocabulary(vocabulary)], dtype=np.object_)
        return self._infer(self.text_model, {"class_names": names}, ["text_embeddings"])["text_embeddings"]

    def detect(self, images, vocabulary: str | Sequence[str] | None = None, text_embeddings=None,
               class_prior=None) -> list[dict[str, torch.Tensor]]:
        """images: [B, 3, H, W] or a list of [3, H, W] float RGB in [0, 1] (numpy or torch), or a list of
        encoded images (bytes). Give the vocabulary (names) or its text_embeddings [K, D].
        Returns B dicts with "boxes" [M, 4] xyxy original pixels, "scores" [M], "labels" [M] int64."""
        if (vocabulary is None) == (text_embeddings is None):
            raise ValueError("give exactly one of vocabulary (class names) and text_embeddings [K, D]")
        if text_embeddings is not None:
            text = check_text_embeddings(text_embeddings, self.embed_dim).detach().float().cpu().numpy()
            vocab, k = {"text_embeddings": text[None]}, len(text)
        else:
            names = load_vocabulary(vocabulary)
            vocab, k = {"class_names": np.array([[n.encode() for n in names]], dtype=np.object_)}, len(names)
        prior = check_class_prior(class_prior, k)
        if prior is not None:
            vocab["class_prior"] = prior.detach().float().cpu().numpy()[None]
        encoded = isinstance(images, (list, tuple)) and images and all(isinstance(i, bytes) for i in images)
        tensors = [{"image": np.array([[i]], dtype=np.object_)} for i in images] if encoded else \
            [{"image_float": img.detach().float().cpu().numpy()[None]} for img in image_list(images)]
        results = []
        for t in tensors:
            out = self._infer(self.model, {**t, **vocab}, ["boxes", "scores", "labels"])
            keep = out["labels"][0] >= 0
            results.append({n: torch.from_numpy(np.ascontiguousarray(out[n][0][keep]))
                            for n in ("boxes", "scores", "labels")})
        return results


def _field(message, name: str):
    """A field of a model config: JSON dict (HTTP) or protobuf message (gRPC)."""
    return message[name] if isinstance(message, dict) else getattr(message, name)
