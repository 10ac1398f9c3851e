"""Validation samples of the base model while it trains: a grid of fixed prompts x seeds."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from .checkpoints import EMA
from .components import assemble_pipeline
from .config import BaseModelConfig

logger = logging.getLogger(__name__)


VALIDATION_PROMPTS = (
    "flat emoji portrait of a person with short brown hair, natural palette, blue plain background",
    "shaded emoji portrait of a person with long blond hair, vivid palette, pink gradient background, smiling",
    "outline emoji portrait of a bald person with glasses, pastel palette, yellow dotted background",
    "sketch emoji portrait of a person with curly hair, natural palette, green striped background",
    "flat emoji avatar of someone with spiky red hair, vivid palette, purple checkered background",
    "shaded emoji headshot of a person with a black bob, mono palette, white plain background",
    "outline emoji portrait of a person with a blue bob, natural palette, teal plain background, eyes closed",
    "flat emoji portrait of someone with pink hair in a bun, pastel palette, orange striped background, laughing",
)


def save_grid(images: Sequence[np.ndarray], path: Path, cols: int) -> None:
    """Save uint8 HxWx3 images as a grid (row-major) with 2 px white gutters."""
    import PIL.Image

    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(grid).save(path)


@torch.no_grad()
def sample_grid(
    path: Path,
    vae_dir: Path,
    tokenizer: CLIPTokenizer,
    modules: dict[str, torch.nn.Module],
    ema: EMA | None,
    config: BaseModelConfig,
    final_dir: Path | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 25,
    guidance_scale: float = 5.0,
) -> None:
    """A grid of samples (rows: VALIDATION_PROMPTS, columns: seeds) with the current (EMA) weights."""
    vae = AutoencoderKL.from_pretrained(vae_dir)
    if final_dir is not None:
        modules = {
            "text_encoder": CLIPTextModel.from_pretrained(final_dir / "text_encoder"),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(final_dir / "text_encoder_2"),
            "unet": UNet2DConditionModel.from_pretrained(final_dir / "unet"),
        }
    training = {k: m.training for k, m in modules.items()}
    with ema.applied() if ema is not None else nullcontext():
        for m in modules.values():
            m.eval()
        pipe = assemble_pipeline(
            vae, modules["text_encoder"], modules["text_encoder_2"], tokenizer, modules["unet"], config=config
        )
        pipe.set_progress_bar_config(disable=True)
        images = []
        for prompt in VALIDATION_PROMPTS:
            g = [torch.Generator().manual_seed(s) for s in seeds]
            out = pipe(
                [prompt] * len(seeds),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=g,
                height=config.resolution,
                width=config.resolution,
                output_type="np",
            ).images
            images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
    for k, m in modules.items():
        m.train(training[k])
    save_grid(images, path, cols=len(seeds))
    logger.info("Samples -> %s", path)
