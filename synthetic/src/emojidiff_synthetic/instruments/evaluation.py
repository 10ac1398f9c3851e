"""Evaluation of a trained instrument on the collection's held-out identities, and its verdict against the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import nn

from ..renderer import EXPRESSION_FIELDS
from .export import onnx_embeddings
from .measure import batched, expression_mae, tar_at_far
from .networks import STYLE_HEADS
from .preprocess import normalise
from .recipes import EYES_OPEN_MAX_CLOSE, INSTRUMENTS, TARGETS


def evaluate(name: str, model: nn.Module, held: dict[str, np.ndarray], train_data: dict, out: Path) -> dict:
    kind = INSTRUMENTS[name]["kind"]
    if kind == "identity":
        emb = F.normalize(batched(model, normalise(held["faces"]), 256), dim=1).numpy()
        result = {"torch": tar_at_far(emb, held["label"])}
        onnx_emb = onnx_embeddings(out / f"{name}.onnx", held["faces"])
        result["onnx"] = tar_at_far(onnx_emb, held["label"])
        result["onnx_vs_torch_min_cosine"] = float((onnx_emb * emb).sum(1).min())
        result["tar@far=0.001"] = result["onnx"]["tar@far=0.001"]
        return result
    if kind == "expression":
        pred = batched(model, normalise(held["faces"]), 256).numpy()
        target = held["expression"]
        baseline = np.broadcast_to(np.median(train_data["expression"], 0), target.shape)
        closes = target[:, [EXPRESSION_FIELDS.index("eye_close_left"), EXPRESSION_FIELDS.index("eye_close_right")]]
        eyes_open = closes.max(1) < EYES_OPEN_MAX_CLOSE
        mae_all = expression_mae(pred, target)
        mae_open = expression_mae(pred[eyes_open], target[eyes_open])
        judged = {f: (mae_open[f] if f.startswith("gaze") else mae_all[f]) for f in EXPRESSION_FIELDS}
        return {
            "mae_all": mae_all,
            "mae_eyes_open": mae_open,
            "eyes_open_samples": int(eyes_open.sum()),
            "mae_judged": judged,
            "baseline_mae_all": expression_mae(baseline, target),
            "max_mae": max(judged.values()),
            "max_mae_factor": max(judged, key=judged.get),
        }
    logits = batched(model, normalise(held["images"]), 256)
    acc = {h: float((logits[h].argmax(1).numpy() == held["style"][:, i]).mean()) for i, h in enumerate(STYLE_HEADS)}
    majority = {
        h: float(np.bincount(held["style"][:, i]).max() / len(held["style"])) for i, h in enumerate(STYLE_HEADS)
    }
    return {"accuracy": acc, "majority_baseline": majority, "min_acc": min(acc.values())}


def verdict(kind: str, result: dict) -> dict:
    key, op, target = TARGETS[kind]
    value = result[key]
    met = value >= target if op == ">=" else value <= target
    return {"metric": key, "value": value, "target": f"{op} {target}", "met": bool(met), "margin": value - target}
