"""Builders of the base model's components (random init) from a :class:`~.config.BaseModelConfig`, its schedulers,
and the assembled :class:`~diffusers.StableDiffusionXLPipeline`."""

from __future__ import annotations

import logging
import re

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from .config import MID_BLOCK_TYPE, PRESETS, TIME_IDS_LEN, BaseModelConfig

logger = logging.getLogger(__name__)


def build_vae(config: BaseModelConfig) -> AutoencoderKL:
    """The VAE (random init). ``scaling_factor`` is set after training from the latents' standard deviation."""
    n = len(config.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_block_out_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_norm_num_groups,
        sample_size=config.resolution,
        force_upcast=True,
    )


def _text_config(config: BaseModelConfig, tokenizer: CLIPTokenizer, index: int) -> CLIPTextConfig:
    hidden = config.text_hidden_sizes[index]
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=config.text_layers[index],
        num_attention_heads=config.text_heads[index],
        max_position_embeddings=config.max_length,
        projection_dim=config.text_projection_dim,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoders(
    config: BaseModelConfig, tokenizer: CLIPTokenizer
) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    """``text_encoder`` (CLIPTextModel) and ``text_encoder_2`` (CLIPTextModelWithProjection), random init."""
    if tokenizer.model_max_length != config.max_length:
        raise ValueError(
            f"The tokenizer's `model_max_length` ({tokenizer.model_max_length}) must equal `max_length` "
            f"({config.max_length})."
        )
    return (
        CLIPTextModel(_text_config(config, tokenizer, 0)),
        CLIPTextModelWithProjection(_text_config(config, tokenizer, 1)),
    )


def build_unet(config: BaseModelConfig) -> UNet2DConditionModel:
    """The SDXL-shaped UNet (random init): SDXL's block types and order (cross-attention at the first level too with
    ``config.full_resolution_attention``), two layers per block, "text_time"."""
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=2,
        block_out_channels=config.unet_block_out_channels,
        down_block_types=config.down_block_types,
        mid_block_type=MID_BLOCK_TYPE,
        up_block_types=config.up_block_types,
        attention_head_dim=config.unet_attention_head_dim,
        transformer_layers_per_block=config.unet_transformer_layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=config.text_projection_dim
        + TIME_IDS_LEN * config.addition_time_embed_dim,
        norm_num_groups=config.unet_norm_num_groups,
    )


def warm_start_unet(unet: UNet2DConditionModel, source: UNet2DConditionModel) -> list[str]:
    """Copy a trained UNet into a larger layout that adds cross-attention blocks to it (the shipped UNet into the
    ``full_resolution_attention`` one): every `source` weight goes to the same name and shape in `unet`; the blocks
    only `unet` has get a zero ``proj_out``, so each is a residual no-op and `unet` starts as `source` exactly.

    Raises ValueError when a `source` weight has no same-name, same-shape place in `unet`, or when `unet` has new
    weights outside ``attentions`` blocks. Returns the names of the new (trainable from scratch) weights."""
    target, given = unet.state_dict(), source.state_dict()
    misfits = [k for k, v in given.items() if k not in target or target[k].shape != v.shape]
    if misfits:
        raise ValueError(
            f"The source UNet does not fit the new layout: {len(misfits)} weights have no same-name, same-shape "
            f"place in it (first: {misfits[0]!r})."
        )
    new = [k for k in target if k not in given]
    stray = [k for k in new if ".attentions." not in k]
    if stray:
        raise ValueError(f"The new layout adds weights outside attention blocks (first: {stray[0]!r}).")
    unet.load_state_dict(given, strict=False)
    blocks = {re.match(r"(.*\.attentions\.\d+)\.", k).group(1) for k in new}  # e.g. down_blocks.0.attentions.1
    with torch.no_grad():
        for name in sorted(blocks):
            proj_out = unet.get_submodule(name).proj_out
            proj_out.weight.zero_()
            proj_out.bias.zero_()
    return new


def build_image_encoder(config: BaseModelConfig) -> CLIPVisionModelWithProjection:
    """The CLIP vision image encoder of the expression branch (random init)."""
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=config.vision_hidden_size,
            intermediate_size=config.vision_intermediate_size,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.vision_image_size,
            patch_size=config.vision_patch_size,
            projection_dim=config.vision_projection_dim,
            hidden_act="gelu",
        )
    )


def build_feature_extractor(config: BaseModelConfig) -> CLIPImageProcessor:
    """The image encoder's preprocessing: resize + centre crop to ``vision_image_size``, CLIP mean/std."""
    s = config.vision_image_size
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": s},
        do_center_crop=True,
        crop_size={"height": s, "width": s},
        do_normalize=True,
        do_convert_rgb=True,
    )


_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def build_noise_scheduler(config: BaseModelConfig) -> DDPMScheduler:
    """Training noise schedule: SDXL's scaled-linear betas, the config's prediction type."""
    return DDPMScheduler(**_BETAS, prediction_type=config.prediction_type, clip_sample=False)


def build_scheduler(config: BaseModelConfig) -> EulerDiscreteScheduler:
    """Sampling scheduler shipped with the pipeline: Euler with SDXL's betas and the config's prediction type,
    trailing spacing (good at 20-30 steps)."""
    return EulerDiscreteScheduler(
        **_BETAS, prediction_type=config.prediction_type, timestep_spacing="trailing", steps_offset=0
    )


def assemble_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    image_encoder: CLIPVisionModelWithProjection | None = None,
    feature_extractor: CLIPImageProcessor | None = None,
    scheduler: EulerDiscreteScheduler | None = None,
    config: BaseModelConfig | None = None,
) -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline from the components (both tokenizers are the same vocabulary); the scheduler
    defaults to :func:`build_scheduler` of `config` (default preset if None)."""
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler if scheduler is not None else build_scheduler(config or PRESETS["default"]),
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
