"""A model.onnx run by ONNX Runtime behind the nn.Module call the Predictor makes, so `load(backend="onnx")`
needs nothing of the exporter (compress/onnx_export.py), which in turn checks its graphs with it."""

from __future__ import annotations

from pathlib import Path

import torch


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session on the CPU: inputs (B, ...) in, logits (B, num_classes) out."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # The Predictor asks a model for its device through its parameters: ONNX Runtime here is on the CPU.
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": inputs.cpu().numpy()})[0])
