"""The served detector: the Triton Python-backend model `cora` (its model.py in the repository imports this).

Inputs per request of n images (the first dim of every input; Triton's dynamic batcher gathers requests):
    image            BYTES   [n, 1]        encoded images (JPEG / PNG), or instead
    image_float      FP32    [n, 3, H, W]  RGB in [0, 1]
    class_names      BYTES   [n, K]        the vocabulary per image, or instead
    text_embeddings  FP32    [n, K, D]
    class_prior      FP32    [n, K]        optional, multiplies the pre-matching probabilities (default ones)
Outputs (detections padded to the most any image of the request has, m):
    boxes            FP32    [n, m, 4]     xyxy in the original image's pixels
    scores           FP32    [n, m]
    labels           INT64   [n, m]        class index, -1 in padding
    label_names      BYTES   [n, m]        the class names when sent as names, else empty

One detection path: the images of a server batch are grouped by vocabulary (embeddings and prior) and
padded size, and each group is one `detect` call of the exported detector's runtime
(cora.runtime.load_detector: OnnxDetector, or TensorRTDetector for an .engine), so letterboxing, the graph
and the boxes' way back to the original pixels are those of `cora detect`. Grouping by padded size keeps an
image's detections independent of the other requests in its batch (a larger canvas changes the features
near the image's border). Class names become embeddings in the text model (cora.serve.text_model, called by
BLS), and both models keep the embeddings of recent names (cora.serve.backend.NameCache), so a repeated
vocabulary costs look-ups.
"""

from __future__ import annotations

import numpy as np

from cora.errors import UserError
from cora.preprocess import padded_size, resized_size
from cora.serve.backend import NameCache, error_response, model_settings
from cora.serve.requests import check_embeddings, check_float_image, check_names, check_prior, decode_image


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from cora.runtime import load_detector

        self.pb = pb_utils
        parameters, self.limits, folder = model_settings(args)
        self.text_model = parameters["text_model"]
        # Names seen recently skip the text model (no BLS round trip, no 1203 strings each way).
        self.names = NameCache(self.encode_names, int(parameters["cache_names"]))
        self.detector = load_detector(folder / parameters["detector_file"], text_encoder=self.encode_names)

    def padded_size(self, image: np.ndarray) -> tuple[int, int]:
        """(H, W) of the letterboxed batch `image` would be alone in (cora.preprocess)."""
        h, w = image.shape[1:]
        d = self.detector
        return padded_size([resized_size(h, w, d.min_size, d.max_size, d.image_size)])

    def encode_names(self, names: list[str]) -> np.ndarray:
        """K names -> [K, D] float32 through the text model (BLS)."""
        pb = self.pb
        request = pb.InferenceRequest(
            model_name=self.text_model, requested_output_names=["text_embeddings"],
            inputs=[pb.Tensor("class_names", np.array([n.encode() for n in names], dtype=np.object_))])
        response = request.exec()
        if response.has_error():
            raise UserError(f"class_names: {response.error().message()}")
        return pb.get_output_tensor_by_name(response, "text_embeddings").as_numpy()

    def _input(self, request, name: str) -> np.ndarray | None:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def parse(self, request) -> list[tuple]:
        """One request -> per image (float32 [3, h, w], text [K, D], prior [K], names or None); UserError for
        bad input."""
        encoded, floats = self._input(request, "image"), self._input(request, "image_float")
        names, embeddings = self._input(request, "class_names"), self._input(request, "text_embeddings")
        prior = self._input(request, "class_prior")
        if (encoded is None) == (floats is None):
            raise UserError("give exactly one of the inputs image (encoded JPEG / PNG bytes, [n, 1]) and "
                            "image_float (FP32 [n, 3, H, W] RGB in [0, 1])")
        if (names is None) == (embeddings is None):
            raise UserError("give exactly one of the inputs class_names (BYTES [n, K]) and text_embeddings "
                            f"(FP32 [n, K, {self.detector.embed_dim}])")
        rows = []
        for j in range(len(encoded if encoded is not None else floats)):
            image = decode_image(encoded[j, 0], self.limits) if encoded is not None \
                else check_float_image(floats[j], self.limits)
            if names is not None:
                row_names = check_names(names[j], self.limits)
                text = self.names(row_names)
            else:
                row_names, text = None, check_embeddings(embeddings[j], self.detector.embed_dim, self.limits)
            rows.append((image, text, check_prior(None if prior is None else prior[j], len(text)), row_names))
        return rows

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses: list = [None] * len(requests)
        groups: dict = {}     # (padded size, vocabulary, prior) -> [(request, row, image)]
        parsed: dict = {}     # request -> its rows
        for i, request in enumerate(requests):
            try:
                parsed[i] = self.parse(request)
            except UserError as e:
                responses[i] = error_response(pb, str(e))
                continue
            for j, (image, text, prior, row_names) in enumerate(parsed[i]):
                # names identify their embeddings (one name cache): no need to hash the K x D floats
                vocabulary = tuple(row_names) if row_names is not None else (text.shape, text.tobytes())
                key = (self.padded_size(image), vocabulary, prior.tobytes())
                groups.setdefault(key, []).append((i, j, image))
        detections: dict = {}
        for members in groups.values():
            i0, j0, _ = members[0]
            _, text, prior, _ = parsed[i0][j0]
            try:
                results = self.detector.detect([m[2] for m in members], text_embeddings=text, class_prior=prior)
            except Exception as e:  # a bug must fail these requests, not the server
                for i, _, _ in members:
                    responses[i] = error_response(pb, f"detection failed: {type(e).__name__}: {e}")
                continue
            for (i, j, _), result in zip(members, results):
                detections[i, j] = result
        for i, rows in parsed.items():
            if responses[i] is None:
                responses[i] = _response(pb, [detections[i, j] for j in range(len(rows))], [r[3] for r in rows])
        return responses


def _response(pb, results: list[dict], names: list[list[str] | None]):
    """Per image {"boxes" [m_i, 4], "scores", "labels"} -> one response padded to m = max m_i."""
    n, m = len(results), max(len(r["labels"]) for r in results)
    boxes = np.zeros((n, m, 4), np.float32)
    scores = np.zeros((n, m), np.float32)
    labels = np.full((n, m), -1, np.int64)
    label_names = np.full((n, m), b"", dtype=np.object_)
    for j, (r, row_names) in enumerate(zip(results, names)):
        k = len(r["labels"])
        boxes[j, :k], scores[j, :k], labels[j, :k] = r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()
        if row_names is not None:
            label_names[j, :k] = [row_names[c].encode() for c in labels[j, :k]]
    return pb.InferenceResponse([pb.Tensor("boxes", boxes), pb.Tensor("scores", scores),
                                 pb.Tensor("labels", labels), pb.Tensor("label_names", label_names)])
