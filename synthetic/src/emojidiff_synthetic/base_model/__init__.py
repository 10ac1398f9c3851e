"""The synthetic world's base model: a tiny SDXL-shaped text-to-image model trained from scratch on the collection.

Same component classes, block types and block order as SDXL, so block-level attention-processor names carry over
(``down_blocks.1.attentions.0`` ... ``up_blocks.1.attentions.2``; ``transformer_blocks`` per block are fewer):

- ``vae``: :class:`~diffusers.AutoencoderKL` 64x64 RGB -> 16x16x8 latents (three encoder blocks).
- ``text_encoder`` / ``text_encoder_2``: :class:`~transformers.CLIPTextModel` and
  :class:`~transformers.CLIPTextModelWithProjection` (penultimate hidden states concatenated, as SDXL), with an
  offline byte-level BPE :class:`~transformers.CLIPTokenizer` whose merges are learned from the caption words
  (:func:`build_tokenizer`).
- ``unet``: :class:`~diffusers.UNet2DConditionModel` with down (DownBlock2D, CrossAttnDownBlock2D,
  CrossAttnDownBlock2D), mid UNetMidBlock2DCrossAttn, up (CrossAttnUpBlock2D, CrossAttnUpBlock2D, UpBlock2D),
  ``layers_per_block=2`` and ``addition_embed_type="text_time"``.
- ``image_encoder`` / ``feature_extractor``: :class:`~transformers.CLIPVisionModelWithProjection` and its
  :class:`~transformers.CLIPImageProcessor`, a general image encoder for the expression branch trained by
  instance contrast (SimCLR, Chen et al. 2020) on collection photos, never on instrument labels or ground truth.
- ``scheduler``: :class:`~diffusers.EulerDiscreteScheduler` (SDXL's scaled-linear betas, v-prediction, trailing
  spacing).

Training (``synthetic/scripts/train_base.py``) runs three stages that read the collection only (never the
renderer): the VAE, then the text encoders + UNet on cached latents, then the image encoder. Randomness is a pure
function of (seed, step) and the data order of (seed, epoch), so a run resumed from a checkpoint repeats the
uninterrupted run's losses. Checkpoints hold ``save_pretrained`` folders (safetensors), optimizer tensors in
safetensors and a JSON file; nothing is pickled.

Modules: ``config`` (sizes, presets), ``tokenizer``, ``components`` (builders, schedulers, the assembled pipeline),
``data`` (a collection split in memory), ``loop`` and ``checkpoints`` (the stages' training loop and EMA, on the
library's toolkit :mod:`emojidiff_pipeline.train`), ``vae``, ``unet`` and ``image_encoder`` (the three stages),
``samples`` (validation grids), ``export`` (the pipeline folder), ``evaluation`` and ``report`` (the quality report
written by ``synthetic/scripts/evaluate_base.py``).
"""

from .checkpoints import EMA
from .components import (
    assemble_pipeline,
    build_feature_extractor,
    build_image_encoder,
    build_noise_scheduler,
    build_scheduler,
    build_text_encoders,
    build_unet,
    build_vae,
    warm_start_unet,
)
from .config import (
    ASSET_DIR,
    DOWN_BLOCK_TYPES,
    MID_BLOCK_TYPE,
    PRESETS,
    STAGES,
    UP_BLOCK_TYPES,
    BaseModelConfig,
    load_base_config,
    save_base_config,
)
from .data import CollectionData, load_collection_split
from .export import export_pipeline, folder_size_mb
from .image_encoder import make_views, nt_xent, train_image_encoder
from .loop import StageConfig
from .tokenizer import build_tokenizer
from .unet import encode_prompt_tokens, train_unet
from .vae import face_weight_map, load_or_encode_latents, train_vae

__all__ = [
    "ASSET_DIR",
    "DOWN_BLOCK_TYPES",
    "MID_BLOCK_TYPE",
    "PRESETS",
    "STAGES",
    "UP_BLOCK_TYPES",
    "BaseModelConfig",
    "EMA",
    "CollectionData",
    "StageConfig",
    "assemble_pipeline",
    "build_feature_extractor",
    "build_image_encoder",
    "build_noise_scheduler",
    "build_scheduler",
    "build_text_encoders",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "encode_prompt_tokens",
    "export_pipeline",
    "face_weight_map",
    "folder_size_mb",
    "load_base_config",
    "load_collection_split",
    "load_or_encode_latents",
    "make_views",
    "nt_xent",
    "save_base_config",
    "train_image_encoder",
    "train_unet",
    "train_vae",
    "warm_start_unet",
]
