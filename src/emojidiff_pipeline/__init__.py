"""emojidiff_pipeline: EmojiDiff (identity-preserving portraits with expression copied from an RGB template) for
diffusers SDXL pipelines."""

from .adapter import EmojiDiffAdapter
from .attention import EmojiDiffAttnProcessor, EmojiDiffConditioning, EmojiDiffPassthroughProcessor
from .layers import select_layers, unet_layers
from .pipeline import EmojiDiffPipeline

__version__ = "0.1.0"

__all__ = [
    "EmojiDiffAdapter",
    "EmojiDiffAttnProcessor",
    "EmojiDiffConditioning",
    "EmojiDiffPassthroughProcessor",
    "EmojiDiffPipeline",
    "select_layers",
    "unet_layers",
]
