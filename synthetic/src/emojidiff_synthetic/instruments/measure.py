"""What the instruments measure: batched embeddings, expression factors and styles of uint8 renders, and the
reports' metrics (TAR at FAR, expression MAE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..renderer import EXPRESSION_FIELDS, STYLE_CHOICES
from .networks import ExpressionEstimator, IdentityEncoder, StyleClassifier
from .preprocess import preprocess_faces, preprocess_style


def batched(module: nn.Module, x: torch.Tensor, batch_size: int) -> Any:
    with torch.no_grad():
        outs = [module(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def embed_identities(encoder: IdentityEncoder, images: Any, keypoints: Any, batch_size: int = 256) -> np.ndarray:
    """L2-normalised identity embeddings (N, 512) float32 of renders (N, H, W, 3) uint8 with keypoints (N, 5, 2)."""
    emb = batched(encoder, preprocess_faces(images, keypoints), batch_size)
    return F.normalize(emb, dim=1).numpy()


def estimate_expressions(
    estimator: ExpressionEstimator, images: Any, keypoints: Any, batch_size: int = 256
) -> np.ndarray:
    """Expression factors (N, 11) float32 in [0, 1], ``EXPRESSION_FIELDS`` order, of renders with keypoints."""
    return batched(estimator, preprocess_faces(images, keypoints), batch_size).numpy()


def classify_styles(classifier: StyleClassifier, images: Any, batch_size: int = 256) -> dict[str, Any]:
    """Style of full renders: ``{"labels": {head: [name, ...]}, "probs": {head: (N, n_choices) array}}``."""
    logits = batched(classifier, preprocess_style(images), batch_size)
    probs = {h: torch.softmax(v, 1).numpy() for h, v in logits.items()}
    labels = {h: [STYLE_CHOICES[h][i] for i in p.argmax(1)] for h, p in probs.items()}
    return {"labels": labels, "probs": probs}


def tar_at_far(embeddings: np.ndarray, labels: np.ndarray, fars: Sequence[float] = (1e-3, 1e-4)) -> dict[str, Any]:
    """Verification on all pairs: genuine = same label, impostor = different labels; cosine scores.

    For each FAR, the threshold is the smallest score that at most a FAR fraction of impostor pairs exceed; TAR is
    the fraction of genuine pairs above it. embeddings (N, D) (normalised here), labels (N,).
    """
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.asarray(labels)
    scores = e @ e.T
    iu = np.triu_indices(len(e), k=1)
    s = scores[iu]
    same = labels[iu[0]] == labels[iu[1]]
    genuine, impostor = s[same], np.sort(s[~same])
    out: dict[str, Any] = {
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "genuine_mean": float(genuine.mean()),
        "impostor_mean": float(impostor.mean()),
    }
    for far in fars:
        k = int(np.floor(far * impostor.size))  # number of impostors allowed above the threshold
        threshold = float(impostor[impostor.size - k - 1]) if k < impostor.size else float(impostor[0])
        out[f"tar@far={far:g}"] = float((genuine > threshold).mean())
        out[f"threshold@far={far:g}"] = threshold
    return out


def expression_mae(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean absolute error per factor, keyed by ``EXPRESSION_FIELDS``."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))
    return {name: float(err[:, i].mean()) for i, name in enumerate(EXPRESSION_FIELDS)}
