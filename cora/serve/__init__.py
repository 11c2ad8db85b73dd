"""Serving with Triton Inference Server: `server` (the tritonserver process: install, start, readiness, stop),
`detector_model` and `text_model` (the Python-backend models of a repository written by
cora.export.triton, with `backend` holding what they share), `requests` (the checks of what clients send).
Clients: cora.runtime.triton."""
