"""The base model's configuration: the sizes of every component (:class:`BaseModelConfig`), its presets, SDXL's
block layout, and the run's ``base_config.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "base"
STAGES: tuple[str, ...] = ("vae", "unet", "image_encoder")
DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
MID_BLOCK_TYPE = "UNetMidBlock2DCrossAttn"
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
# the variant with cross-attention at the latent's own resolution too (``full_resolution_attention``)
FULL_RESOLUTION_DOWN_BLOCK_TYPES = ("CrossAttnDownBlock2D",) * 3
FULL_RESOLUTION_UP_BLOCK_TYPES = ("CrossAttnUpBlock2D",) * 3
CONFIG_FILE = "base_config.json"
PREDICTION_TYPES = ("v_prediction", "epsilon")
TIME_IDS_LEN = 6  # SDXL's add_time_ids: original size (2), crop top-left (2), target size (2)


@dataclass
class BaseModelConfig:
    """Sizes of every component of the base model.

    Args:
        resolution: image side in pixels (the collection's size).
        vae_block_out_channels: channels of the VAE's encoder blocks; ``len - 1`` downsamplings by 2.
        vae_layers_per_block: ResNet layers per VAE encoder block (decoder blocks get one more, as in diffusers).
        vae_norm_num_groups: GroupNorm groups of the VAE (must divide every VAE channel count).
        latent_channels: VAE latent channels.
        text_hidden_sizes: hidden sizes of ``text_encoder`` and ``text_encoder_2``; their sum is the UNet's
            ``cross_attention_dim`` (SDXL: 768 + 1280).
        text_layers: transformer layers of the two text encoders (SDXL reads the penultimate hidden states).
        text_heads: attention heads of the two text encoders.
        text_projection_dim: ``text_encoder_2``'s projection (the pooled ``text_embeds``).
        max_length: tokenizer ``model_max_length`` and text position embeddings (SDXL: 77).
        unet_block_out_channels: UNet channels per resolution level (SDXL: 320, 640, 1280).
        unet_transformer_layers_per_block: transformer blocks per attention module per level (SDXL: 1, 2, 10).
        unet_attention_head_dim: diffusers' ``attention_head_dim`` (the number of heads per level, as in SDXL's
            config: 5, 10, 20).
        unet_norm_num_groups: GroupNorm groups of the UNet.
        addition_time_embed_dim: per-number embedding of SDXL's six size/crop conditioning numbers (SDXL: 256).
        vision_hidden_size, vision_layers, vision_heads, vision_intermediate_size, vision_patch_size,
        vision_image_size, vision_projection_dim: the CLIP vision image encoder.
        prediction_type: what the UNet predicts, "v_prediction" (Salimans & Ho 2022; keeps the x0 error bounded at
            high noise, which a small UNet needs) or "epsilon" (SDXL's).
        full_resolution_attention: give the UNet's first level (the latent's own resolution, 16x16 at 64 px)
            cross-attention too, which SDXL's layout leaves out: at 64 px SDXL's layout attends at 8x8 (8 px a cell,
            coarser than an iris or a brow), while SDXL itself at 1024 px attends at 64x64 (16 px of 1,024); one
            attention cell per 4 px puts a cell over a face about where a 128 px world with SDXL's layout would.
    """

    resolution: int = 64
    vae_block_out_channels: tuple[int, ...] = (16, 32, 64)
    vae_layers_per_block: int = 1
    vae_norm_num_groups: int = 8
    latent_channels: int = 8
    text_hidden_sizes: tuple[int, int] = (64, 128)
    text_layers: tuple[int, int] = (3, 3)
    text_heads: tuple[int, int] = (2, 4)
    text_projection_dim: int = 128
    max_length: int = 77
    unet_block_out_channels: tuple[int, int, int] = (32, 64, 96)
    unet_transformer_layers_per_block: tuple[int, int, int] = (1, 1, 1)
    unet_attention_head_dim: tuple[int, int, int] = (1, 2, 3)
    unet_norm_num_groups: int = 16
    addition_time_embed_dim: int = 16
    vision_hidden_size: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    vision_patch_size: int = 8
    vision_image_size: int = 64
    vision_projection_dim: int = 128
    prediction_type: str = "v_prediction"
    full_resolution_attention: bool = False

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        if not isinstance(self.full_resolution_attention, bool):
            raise ValueError(
                f"`full_resolution_attention` must be True or False, got {self.full_resolution_attention!r}."
            )
        for f in dataclasses.fields(self):
            if f.name in ("prediction_type", "full_resolution_attention"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, list):
                value = tuple(value)
                setattr(self, f.name, value)
            items = value if isinstance(value, tuple) else (value,)
            if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
                raise ValueError(f"`{f.name}` must be a positive int or a tuple of positive ints, got {value!r}.")
        for name, n in (("text_hidden_sizes", 2), ("text_layers", 2), ("text_heads", 2)):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"`{name}` must have {n} entries (text_encoder, text_encoder_2), got {getattr(self, name)}."
                )
        for name in ("unet_block_out_channels", "unet_transformer_layers_per_block", "unet_attention_head_dim"):
            if len(getattr(self, name)) != len(DOWN_BLOCK_TYPES):
                raise ValueError(
                    f"`{name}` must have {len(DOWN_BLOCK_TYPES)} entries (SDXL's levels), got {getattr(self, name)}."
                )
        if self.resolution % self.vae_scale_factor:
            raise ValueError(
                f"`resolution`={self.resolution} must be divisible by the VAE scale factor {self.vae_scale_factor}."
            )
        latent = self.resolution // self.vae_scale_factor
        if latent % 4:
            raise ValueError(f"The latent side {latent} must be divisible by 4 (the UNet downsamples twice).")
        if any(c % self.vae_norm_num_groups for c in self.vae_block_out_channels):
            raise ValueError(
                f"`vae_norm_num_groups`={self.vae_norm_num_groups} must divide every `vae_block_out_channels` "
                f"{self.vae_block_out_channels}."
            )
        if any(c % self.unet_norm_num_groups for c in self.unet_block_out_channels):
            raise ValueError(
                f"`unet_norm_num_groups`={self.unet_norm_num_groups} must divide every `unet_block_out_channels` "
                f"{self.unet_block_out_channels}."
            )
        for c, h in zip(self.unet_block_out_channels, self.unet_attention_head_dim):
            if c % h:
                raise ValueError(f"UNet channels {c} are not divisible by {h} heads (`unet_attention_head_dim`).")
        for size, heads in zip(self.text_hidden_sizes, self.text_heads):
            if size % heads:
                raise ValueError(f"Text hidden size {size} is not divisible by {heads} heads (`text_heads`).")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError(f"`vision_hidden_size` {self.vision_hidden_size} is not divisible by `vision_heads`.")
        if self.vision_image_size % self.vision_patch_size:
            raise ValueError("`vision_image_size` must be divisible by `vision_patch_size`.")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @property
    def down_block_types(self) -> tuple[str, ...]:
        return FULL_RESOLUTION_DOWN_BLOCK_TYPES if self.full_resolution_attention else DOWN_BLOCK_TYPES

    @property
    def up_block_types(self) -> tuple[str, ...]:
        return FULL_RESOLUTION_UP_BLOCK_TYPES if self.full_resolution_attention else UP_BLOCK_TYPES

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor

    @property
    def cross_attention_dim(self) -> int:
        return sum(self.text_hidden_sizes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown base model config keys {unknown}; valid keys: {sorted(names)}.")
        return cls(**d)


PRESETS: dict[str, BaseModelConfig] = {
    "default": BaseModelConfig(),
    # the shipped sizes with cross-attention at 16x16 as well (gaze and brows need finer cells: README, issue 9)
    "attn16": BaseModelConfig(full_resolution_attention=True),
    # toy sizes for tests: same structure, a few seconds per stage
    "tiny": BaseModelConfig(
        vae_block_out_channels=(8, 16, 16),
        vae_norm_num_groups=8,
        text_hidden_sizes=(16, 16),
        text_layers=(2, 2),
        text_heads=(2, 2),
        text_projection_dim=16,
        unet_block_out_channels=(16, 32, 32),
        unet_attention_head_dim=(2, 2, 2),
        unet_norm_num_groups=8,
        addition_time_embed_dim=4,
        vision_hidden_size=16,
        vision_layers=2,
        vision_heads=2,
        vision_intermediate_size=32,
        vision_patch_size=16,
        vision_image_size=32,
        vision_projection_dim=16,
    ),
}


def load_base_config(run_dir: Path) -> BaseModelConfig:
    return BaseModelConfig.from_dict(json.loads((Path(run_dir) / CONFIG_FILE).read_text()))


def save_base_config(run_dir: Path, config: BaseModelConfig) -> None:
    """Write the run's model config, or check that it matches the one already there."""
    path = Path(run_dir) / CONFIG_FILE
    if path.exists():
        saved = load_base_config(run_dir)
        if saved != config:
            raise ValueError(
                f"{path} holds a different model config ({saved}); use a new `--out` or the same `--size`."
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=1))
