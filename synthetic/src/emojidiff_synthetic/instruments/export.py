"""Export of a trained instrument: fp16 safetensors, and for the identity encoders an insightface-loadable
ArcFace-shaped ONNX file (float16 initializers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .files import save_instrument
from .networks import IdentityEncoder
from .preprocess import FACE_SIZE
from .recipes import INSTRUMENTS


def fp16_round(module: nn.Module) -> nn.Module:
    """Round float parameters and buffers to fp16 precision (what the shipped safetensors hold)."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return module


def export_identity_onnx(encoder: IdentityEncoder, path: Path) -> Path:
    """ArcFace-shaped ONNX: input "input.1" [N, 3, 112, 112] -> "embedding" [N, 512] (insightface ArcFaceONNX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            encoder.eval(),
            (torch.zeros(1, 3, FACE_SIZE, FACE_SIZE),),
            str(path),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return store_weights_fp16(path)


def store_weights_fp16(path: Path) -> Path:
    """Halve an ONNX file: float32 weights are stored as float16 initializers, each followed by a Cast to float32
    (folded by onnxruntime at load time), so the graph still computes in float32 and its interface is unchanged."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= 16:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}_fp16")
            kept.append(half)
            casts.append(
                helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=f"Cast_{init.name}")
            )
        else:
            kept.append(init)
    nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_embeddings(path: Path, faces: np.ndarray) -> np.ndarray:
    """Embeddings through insightface's own ArcFaceONNX preprocessing (aligned crops given in RGB; it wants BGR)."""
    from insightface.model_zoo import get_model

    model = get_model(str(path), providers=["CPUExecutionProvider"])
    if type(model).__name__ != "ArcFaceONNX":
        raise RuntimeError(f"insightface routed {path} to {type(model).__name__}, not ArcFaceONNX")
    feats = [model.get_feat(list(faces[i : i + 256, :, :, ::-1])) for i in range(0, len(faces), 256)]
    e = np.concatenate(feats)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def export(name: str, model: nn.Module, out: Path) -> list[Path]:
    files = [save_instrument(model, out / f"{name}.safetensors", extra={"instrument": name})]
    if INSTRUMENTS[name]["kind"] == "identity":
        files.append(export_identity_onnx(model, out / f"{name}.onnx"))
    for f in files:
        f.chmod(0o644)  # shipped package data: readable by everyone (safetensors writes 0600)
    return files
