"""Run a CORA TensorRT engine (export/to_trt.py) with `CORA.detect`'s API; torch CUDA tensors for I/O.

    det = TensorRTDetector("cora.engine", text_encoder="text.onnx")
    results = det.detect(images, vocabulary="cat, dog")

Needs TensorRT 10.x (Python package `tensorrt`) and a CUDA GPU; this module imports without them and
the constructor says what is missing. Not tested on the development machines (no TensorRT there): the
ONNX Runtime runner (cora.runtime.onnx) shares all pre/post-processing with it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from cora.runtime.base import ExportedDetector, read_metadata


class TensorRTDetector(ExportedDetector):
    """Args:
        path: the .engine file (its `<path>.json` sidecar gives the resize sizes and a baked vocabulary).
        device: the CUDA device the engine runs on.
        text_encoder: a text-encoder .onnx path or a callable names -> [K, D], for `vocabulary=` names.
        min_size, max_size: override the export's resize sizes (dynamic-size engines only).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cuda", text_encoder=None,
                 min_size: int | None = None, max_size: int | None = None):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise ImportError("TensorRTDetector needs TensorRT 10 (Python package `tensorrt`), which is not "
                              "installed; run the .onnx file with cora.runtime.onnx.OnnxDetector instead") from e
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRTDetector needs a CUDA GPU and none is visible; run the .onnx file with "
                               "cora.runtime.onnx.OnnxDetector instead")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} does not exist")
        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # ROIAlign_TRT
        with open(path, "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ValueError(f"{path!r} is not a TensorRT engine for this TensorRT version / GPU")
        self.context = self.engine.create_execution_context()
        self.device = torch.device(device)
        self.meta = read_metadata(path, fmt="engine", graph="detector")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        h, w = self.engine.get_tensor_shape("images")[2:]
        self.image_size = (h, w) if h > 0 and w > 0 else None
        if "text_embeddings" in self.inputs:
            self.embed_dim = int(self.engine.get_tensor_shape("text_embeddings")[1])
            self.vocabulary = None
        else:
            self.embed_dim = int(self.meta.get("embed_dim", 0))
            self.vocabulary = list(self.meta["vocabulary"])
        self._set_resize_sizes(min_size, max_size, self.meta["preprocess"])
        from cora.runtime.onnx import open_text_encoder

        self._set_text_encoder(open_text_encoder(text_encoder, path, self.meta))

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt = self._trt
        table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                 trt.int64: torch.int64, trt.bool: torch.bool}
        return table[self.engine.get_tensor_dtype(name)]

    def _run(self, batch: torch.Tensor, image_sizes: np.ndarray, text: np.ndarray | None, prior: np.ndarray):
        feeds = {"images": batch, "image_sizes": torch.from_numpy(image_sizes), "class_prior": torch.from_numpy(prior)}
        if text is not None:
            feeds["text_embeddings"] = torch.from_numpy(text)
        for name, t in feeds.items():
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            if any(not a <= s <= b for a, s, b in zip(lo, t.shape, hi)):
                raise ValueError(f"{name} of shape {list(t.shape)} is outside the engine's optimisation profile "
                                 f"[{list(lo)} .. {list(hi)}]; rebuild with export/to_trt.py (--vocab-profile, "
                                 "--image-profile, --batch-profile)")
            t = t.to(self.device, self._torch_dtype(name)).contiguous()
            feeds[name] = t  # keep a reference until the run ends
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in ("boxes", "scores", "labels"):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        stream.synchronize()
        return outputs["boxes"], outputs["scores"], outputs["labels"].long()
