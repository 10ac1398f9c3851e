"""emojidiff_pipeline: EmojiDiff (identity-preserving portraits with expression copied from an RGB template) for
diffusers SDXL pipelines.

Public names are imported lazily, so importing the package (or a light module of it) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "EmojiDiffAdapter": ".adapter",
    "EmojiDiffAttnProcessor": ".attention",
    "EmojiDiffConditioning": ".attention",
    "EmojiDiffPassthroughProcessor": ".attention",
    "EmojiDiffControlNetPipeline": ".pipeline",
    "EmojiDiffImg2ImgPipeline": ".pipeline",
    "EmojiDiffInpaintPipeline": ".pipeline",
    "EmojiDiffIPAdapterAttnProcessor": ".attention",
    "EmojiDiffMixin": ".mixin",
    "EmojiDiffPipeline": ".pipeline",
    "EmojiDiffStableDiffusionPipeline": ".pipeline",
    "select_layers": ".layers",
    "unet_layers": ".layers",
}

__all__ = [
    "EmojiDiffAdapter",
    "EmojiDiffAttnProcessor",
    "EmojiDiffConditioning",
    "EmojiDiffPassthroughProcessor",
    "EmojiDiffControlNetPipeline",
    "EmojiDiffImg2ImgPipeline",
    "EmojiDiffInpaintPipeline",
    "EmojiDiffIPAdapterAttnProcessor",
    "EmojiDiffMixin",
    "EmojiDiffPipeline",
    "EmojiDiffStableDiffusionPipeline",
    "select_layers",
    "unet_layers",
]

if TYPE_CHECKING:
    from .adapter import EmojiDiffAdapter
    from .attention import (
        EmojiDiffAttnProcessor,
        EmojiDiffConditioning,
        EmojiDiffIPAdapterAttnProcessor,
        EmojiDiffPassthroughProcessor,
    )
    from .layers import select_layers, unet_layers
    from .mixin import EmojiDiffMixin
    from .pipeline import (
        EmojiDiffControlNetPipeline,
        EmojiDiffImg2ImgPipeline,
        EmojiDiffInpaintPipeline,
        EmojiDiffPipeline,
        EmojiDiffStableDiffusionPipeline,
    )


# `DiffusionPipeline.from_pretrained(folder)` resolves our pipeline classes by name (lazily: no torch import here)
from ._diffusers_registry import register as _register_with_diffusers  # noqa: E402

_register_with_diffusers()


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
