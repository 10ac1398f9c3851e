"""What a face detector and a face recognizer must provide to plug into
:class:`~emojidiff_pipeline.face.FaceAnalyzer`, training, IDI and evaluation. The expression encoder's protocol is
:class:`emojidiff_pipeline.expression.ExpressionEncoder`.

    class MyDetector:                         # FaceDetector
        name = "my-detector"
        def __call__(self, image):            # RGB uint8 (H, W, 3) -> [(bbox (4,), kps (5, 2), score), ...]
            ...

    class MyRecognizer:                       # FaceRecognizer
        name = "my-recognizer-v1"             # recorded in adapter configs (`identity_encoder`)
        embedding_dim = 128                   # recorded too (`identity_embed_dim`)
        def embed(self, image, kps):          # RGB uint8 (H, W, 3), kps (5, 2) pixels -> (128,) float32, L2-normed
            ...

Keypoints are insightface's 5 points in image pixels, in image order: the eye with the smaller x first, then the
other eye, the nose tip, the mouth corner with the smaller x, the other mouth corner.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

# the run-time checks live in recognizers.py (numpy only; copied into remote-code pipeline folders)
from ..recognizers import check_adapter_recognizer, check_face_recognizer, is_face_recognizer, recognizer_info

__all__ = [
    "FaceDetector",
    "FaceRecognizer",
    "check_adapter_recognizer",
    "check_face_detector",
    "check_face_recognizer",
    "is_face_recognizer",
    "recognizer_info",
]


@runtime_checkable
class FaceDetector(Protocol):
    """RGB image (H, W, 3) uint8 -> detected faces ``[(bbox (4,) x1 y1 x2 y2, kps (5, 2), score), ...]``."""

    name: str

    def __call__(self, image: np.ndarray) -> list: ...


@runtime_checkable
class FaceRecognizer(Protocol):
    """RGB image (H, W, 3) uint8 + the face's 5 keypoints (5, 2) -> identity embedding (embedding_dim,), L2-normed."""

    name: str
    embedding_dim: int

    def embed(self, image: np.ndarray, kps: np.ndarray) -> np.ndarray: ...


def check_face_detector(detector: Any, arg: str = "detector") -> FaceDetector:
    """Return `detector` if it follows :class:`FaceDetector`, else raise naming `arg` and what was received."""
    if not isinstance(detector, FaceDetector) or not callable(detector):
        raise TypeError(
            f"`{arg}` must be a face detector: a callable image -> [(bbox, kps, score)] with a `name` (str) "
            f"(see emojidiff_pipeline.face_models.protocols), got {type(detector).__name__}."
        )
    return detector
