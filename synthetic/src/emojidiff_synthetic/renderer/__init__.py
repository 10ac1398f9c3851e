"""Procedural cartoon ("emoji") portraits whose identity, expression, style and pose factors are known exactly.

The proving ground of DESIGN.md: `render(identity, expression, style, pose)` draws a deterministic RGB portrait,
its five insightface-order keypoints and a face-region mask. Shapes are polygons built in a face frame, posed with
one similarity transform, filled by Pillow on a 4x supersampled canvas and box-downsampled (anti-aliasing).
numpy + Pillow only: importing this module never imports torch.

Conventions:
- "left" / "right" always mean image left / image right (keypoint 0 is the image-left eye, and `eye_close_left`
  closes that same eye).
- Keypoints are in output pixel-index coordinates: the centre of pixel `image[i, j]` is `(x=j, y=i)`, as in
  insightface / OpenCV.

Modules: ``factors`` (the factor dataclasses and vocabularies), ``portrait`` (`render`, in named drawing steps),
``canvas`` (face-frame polygons and the supersampled canvas), ``colors``, ``background``, ``sketch`` (the pencil
rendering).
"""

from .factors import (
    BACKGROUND_COLORS,
    EXPRESSION_FIELDS,
    EXPRESSION_PRESETS,
    HAIR_STYLES,
    IDENTITY_FIELDS,
    POSE_RANGES,
    STYLE_CHOICES,
    Expression,
    Identity,
    Pose,
    RenderResult,
    Style,
)
from .portrait import render

__all__ = [
    "BACKGROUND_COLORS",
    "EXPRESSION_FIELDS",
    "EXPRESSION_PRESETS",
    "HAIR_STYLES",
    "IDENTITY_FIELDS",
    "POSE_RANGES",
    "STYLE_CHOICES",
    "Expression",
    "Identity",
    "Pose",
    "RenderResult",
    "Style",
    "render",
]
