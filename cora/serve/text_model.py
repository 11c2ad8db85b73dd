"""The served text side: the Triton Python-backend model `cora_text` (class names in, embeddings out), used
by the detector model through BLS and by clients directly.

    class_names      BYTES [K]      ->  text_embeddings  FP32 [K, D]

Embeddings come from the exported CLIP text encoder (cora.runtime.onnx.OnnxTextEncoder: the export's
templates and tokenizer), through a bounded cache of one embedding per class name
(cora.serve.backend.NameCache), so a repeated vocabulary, or one that shares names with recent ones, costs
look-ups only, and memory stays bounded however many vocabularies clients send. The cache belongs to one
encoder and its templates, so the name is the whole key.
"""

from __future__ import annotations

from cora.errors import UserError
from cora.serve.backend import NameCache, error_response, model_settings
from cora.serve.requests import check_names


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from cora.runtime.onnx import OnnxTextEncoder

        self.pb = pb_utils
        parameters, self.limits, folder = model_settings(args)
        encoder = OnnxTextEncoder(folder / parameters["text_encoder_file"])
        self.cache = NameCache(encoder, int(parameters["cache_names"]))

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses = []
        for request in requests:
            try:
                names = check_names(pb.get_input_tensor_by_name(request, "class_names").as_numpy(), self.limits)
                embeddings = self.cache(names)
            except UserError as e:
                responses.append(error_response(pb, str(e)))
                continue
            responses.append(pb.InferenceResponse([pb.Tensor("text_embeddings", embeddings)]))
        return responses
