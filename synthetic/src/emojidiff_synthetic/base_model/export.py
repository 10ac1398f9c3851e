"""Export of a trained run: its stages assembled into one StableDiffusionXLPipeline folder."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .components import assemble_pipeline
from .config import CONFIG_FILE, STAGES, load_base_config

logger = logging.getLogger(__name__)


def export_pipeline(run_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float16) -> StableDiffusionXLPipeline:
    """Assemble the trained stages of `run_dir` into a StableDiffusionXLPipeline folder at `out_dir`.

    The UNet and the VAE are stored in `dtype` (diffusers loads them as float32 unless ``torch_dtype`` is given);
    the transformers components (text encoders, image encoder) always in float32, because transformers loads
    weights in their stored dtype by default: a plain ``from_pretrained(folder)`` then runs in float32 throughout.
    """
    run_dir = Path(run_dir)
    missing = [s for s in STAGES if not (run_dir / s / "final").is_dir()]
    if missing:
        raise FileNotFoundError(f"Cannot export {run_dir}: stages {missing} have no final/ folder (train them first).")
    unet_dir, enc_dir = run_dir / "unet" / "final", run_dir / "image_encoder" / "final"
    pipe = assemble_pipeline(
        vae=AutoencoderKL.from_pretrained(run_dir / "vae" / "final", torch_dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(unet_dir / "text_encoder", dtype=torch.float32),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(unet_dir / "text_encoder_2", dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(unet_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(unet_dir / "unet", torch_dtype=dtype),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(enc_dir / "image_encoder", dtype=torch.float32),
        feature_extractor=CLIPImageProcessor.from_pretrained(enc_dir / "feature_extractor"),
        config=load_base_config(run_dir),
    )
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.copy(run_dir / CONFIG_FILE, tmp / CONFIG_FILE)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return pipe


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
