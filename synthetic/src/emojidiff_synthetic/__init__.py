"""The synthetic proving ground (DESIGN.md): procedurally rendered emoji portraits with known factors.

A package of its own beside the library: it depends on `emojidiff_pipeline`, never the reverse. Importing it needs
numpy and Pillow only (no torch).
"""

__version__ = "0.1.0"

from .renderer import (
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
    render,
)

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

from .load import World, load_world  # noqa: E402  (numpy only; heavy parts load on use)

__all__ += ["World", "load_world"]
