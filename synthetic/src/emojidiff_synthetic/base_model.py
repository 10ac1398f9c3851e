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

Training (``synthetic/scripts/train_base.py``) runs three stages that read the collection only (never the renderer): the
VAE, then the text encoders + UNet on cached latents, then the image encoder. Randomness is a pure function of
(seed, step) and the data order of (seed, epoch), so a run resumed from a checkpoint repeats the uninterrupted
run's losses. Checkpoints hold ``save_pretrained`` folders (safetensors), optimizer tensors in safetensors and a
JSON file; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

logger = logging.getLogger(__name__)

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
    "diffusion_target",
    "encode_prompt_tokens",
    "export_pipeline",
    "face_weight_map",
    "load_collection_split",
    "make_views",
    "nt_xent",
    "train_image_encoder",
    "train_unet",
    "train_vae",
]

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "base"
STAGES: tuple[str, ...] = ("vae", "unet", "image_encoder")
DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
MID_BLOCK_TYPE = "UNetMidBlock2DCrossAttn"
UP_BLOCK_TYPES = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
_CONFIG_FILE = "base_config.json"
PREDICTION_TYPES = ("v_prediction", "epsilon")
_TIME_IDS_LEN = 6  # SDXL's add_time_ids: original size (2), crop top-left (2), target size (2)


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}.")
        for f in dataclasses.fields(self):
            if f.name == "prediction_type":
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


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokenization for lowercase ASCII text


def _byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode map: 256 printable characters, one per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _learn_merges(words: Counter, max_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding (Sennrich et al. 2016) on a word-frequency table, CLIP style (last symbol ends with
    ``</w>``): merge the most frequent adjacent pair until every word is one symbol or `max_merges` is reached."""
    seqs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for w, syms in seqs.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken alphabetically
        merges.append(best)
        joined = best[0] + best[1]
        for w, syms in seqs.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            seqs[w] = out
    return merges


def build_tokenizer(captions: Sequence[str], model_max_length: int = 77, max_merges: int = 4000) -> CLIPTokenizer:
    """An offline CLIP tokenizer: byte-level vocab (tokenizes any string) plus BPE merges learned from the words of
    `captions`, so that caption words are single tokens. Saves with ``save_pretrained`` and reloads offline."""
    if isinstance(captions, str) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("`captions` must be a non-empty sequence of strings.")
    if not isinstance(model_max_length, int) or model_max_length < 4:
        raise ValueError(f"`model_max_length` must be an int >= 4, got {model_max_length!r}.")
    words: Counter = Counter()
    for c in captions:
        words.update(w for w in _WORD_RE.findall(" ".join(c.lower().split())) if w.isascii())
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    merges = _learn_merges(words, max_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# ----------------------------------------------------------------------------------------------------------------
# Component builders
# ----------------------------------------------------------------------------------------------------------------


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
    """The SDXL-shaped UNet (random init): SDXL's block types and order, two layers per block, "text_time"."""
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=2,
        block_out_channels=config.unet_block_out_channels,
        down_block_types=DOWN_BLOCK_TYPES,
        mid_block_type=MID_BLOCK_TYPE,
        up_block_types=UP_BLOCK_TYPES,
        attention_head_dim=config.unet_attention_head_dim,
        transformer_layers_per_block=config.unet_transformer_layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=config.text_projection_dim
        + _TIME_IDS_LEN * config.addition_time_embed_dim,
        norm_num_groups=config.unet_norm_num_groups,
    )


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


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CollectionData:
    """One split of the collection in memory.

    Attributes:
        images: (N, S, S, 3) uint8 RGB.
        captions: N captions.
        identities: N identity names.
        kps: (N, 5, 2) float32 keypoints (insightface order, pixel coordinates).
        paths: N collection-relative image paths.
        fingerprint: a hash of the manifest (invalidates caches when the collection changes).
    """

    images: np.ndarray
    captions: list[str]
    identities: list[str]
    kps: np.ndarray
    paths: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.captions)


def load_collection_split(root: str | os.PathLike, split: str = "train", limit: int | None = None) -> CollectionData:
    """Read a split of a photo collection through :class:`~emojidiff_synthetic.collection.Collection`."""
    from .collection import Collection

    collection = Collection(root)
    records = collection.records(split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"The {split!r} split of the collection at {str(root)!r} is empty.")
    images = np.stack([collection.load_image(r) for r in records])
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode())
    return CollectionData(
        images=images,
        captions=[r["caption"] for r in records],
        identities=[r["identity"] for r in records],
        kps=np.asarray([r["kps"] for r in records], dtype=np.float32),
        paths=[r["path"] for r in records],
        fingerprint=h.hexdigest()[:16],
    )


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------------------------
# Deterministic randomness and batching
# ----------------------------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, step, stream)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + stream) % (2**63))


class BatchSampler:
    """Rows of step `step`: epoch-wise permutations seeded by (seed, epoch), read as one stream."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("Cannot sample batches from an empty data set.")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def rows(self, step: int) -> torch.Tensor:
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._perm(epoch)[offset])
        return torch.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, no pickle)
# ----------------------------------------------------------------------------------------------------------------


def _weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No safetensors weights in {folder}.")


class EMA:
    """Exponential moving average of parameters, keyed by ``"<module>.<param name>"`` (warm-up: the decay is
    ``min(decay, (1 + t) / (10 + t))``)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {
            f"{m}.{n}": p.detach().clone().float()
            for m, mod in modules.items()
            for n, p in mod.named_parameters()
            if p.requires_grad
        }

    def _params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for m, mod in self.modules.items():
            for n, p in mod.named_parameters():
                key = f"{m}.{n}"
                if key in self.shadow:
                    yield key, p

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the modules."""
        backup = {}
        with torch.no_grad():
            for key, p in self._params():
                backup[key] = p.detach().clone()
                p.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self._params():
                    p.copy_(backup[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA checkpoint does not match the trained parameters.")
        for k, v in state.items():
            self.shadow[k].copy_(v)


def save_checkpoint(
    folder: Path,
    modules: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any] | None = None,
    ema: EMA | None = None,
) -> None:
    """Write `folder` atomically: one ``save_pretrained`` folder per module, optimizer.safetensors, ema.safetensors,
    state.json (step, param groups, `extra`)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        module.save_pretrained(tmp / name)
    state = optimizer.state_dict()
    tensors = {
        f"{idx}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
        for idx, s in state["state"].items()
        for k, v in s.items()
    }
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
    meta = {"step": step, "param_groups": state["param_groups"], "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, ema: EMA | None = None
) -> tuple[int, dict[str, Any]]:
    """Restore module weights, optimizer state and EMA from `folder`; returns (step, extra)."""
    for name, module in modules.items():
        module.load_state_dict(load_file(_weights_file(folder / name)))
    meta = json.loads((folder / "state.json").read_text())
    state: dict[int, dict] = {}
    for key, value in load_file(folder / "optimizer.safetensors").items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if ema is not None:
        ema.load_state_dict(load_file(folder / "ema.safetensors"))
    return int(meta["step"]), meta["extra"]


def list_checkpoints(stage_dir: Path) -> list[Path]:
    found = [p for p in stage_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _prune(stage_dir: Path, limit: int | None) -> None:
    if limit:
        for old in list_checkpoints(stage_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class StageConfig:
    """Loop settings of one stage.

    Args:
        max_steps: optimizer steps.
        batch_size: images per step.
        learning_rate: AdamW peak learning rate (linear warm-up, then constant).
        lr_warmup_steps: warm-up steps.
        weight_decay: AdamW weight decay.
        seed: seeds initialisation, data order and per-step noise.
        checkpointing_steps: a checkpoint every this many steps (and at the end).
        checkpoints_total_limit: keep this many checkpoints (None: all).
        log_every: log the mean loss every this many steps.
        ema_decay: EMA decay of the trained weights (0 disables; UNet stage only).
        caption_dropout: probability of replacing a caption by the empty prompt (zeros, as SDXL's
            ``force_zeros_for_empty_prompt``), for classifier-free guidance (UNet stage only).
        snr_gamma: Min-SNR loss weighting (Hang et al. 2023); 0 disables (UNet stage only).
        kl_weight: weight of the KL term per latent element (VAE stage only).
        grad_weight: weight of the image-gradient L1 term (VAE stage only).
        face_weight: extra loss weight near the keypoints, see :func:`face_weight_map` (VAE stage only).
        temperature: NT-Xent temperature (image-encoder stage only).
        validation_steps: write a sample grid every this many steps and at the end (0: never; UNet stage only).
    """

    max_steps: int
    batch_size: int
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 100
    weight_decay: float = 1e-2
    seed: int = 0
    checkpointing_steps: int = 200
    checkpoints_total_limit: int | None = 2
    log_every: int = 25
    ema_decay: float = 0.0
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    kl_weight: float = 1e-5
    grad_weight: float = 0.5
    face_weight: float = 4.0
    temperature: float = 0.1
    validation_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "checkpointing_steps", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.caption_dropout!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")

    def resume_key(self) -> dict[str, Any]:
        """Settings that must match for a resumed run to repeat the uninterrupted one."""
        keys = ("batch_size", "learning_rate", "lr_warmup_steps", "weight_decay", "seed", "ema_decay",
                "caption_dropout", "snr_gamma", "kl_weight", "grad_weight", "face_weight", "temperature")  # fmt: skip
        return {k: getattr(self, k) for k in keys}


def _make_optimizer(params: list[torch.nn.Parameter], cfg: StageConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))


def _set_lr(optimizer: torch.optim.Optimizer, cfg: StageConfig, step: int) -> None:
    lr = cfg.learning_rate * min(1.0, (step + 1) / max(1, cfg.lr_warmup_steps))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _start(
    stage_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    cfg: StageConfig,
    resume: bool,
    ema: EMA | None = None,
) -> int:
    """Fresh start (refuses to overwrite a stage that has checkpoints) or resume from the latest checkpoint."""
    found = list_checkpoints(stage_dir)
    log_path = stage_dir / "loss_log.jsonl"
    if not resume:
        if found:
            raise FileExistsError(
                f"{stage_dir} already holds {found[-1].name}; pass `--resume` to continue it, or choose a new `--out`."
            )
        stage_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        return 0
    if not found:
        logger.info("No checkpoint in %s: starting this stage from scratch.", stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        return 0
    step, extra = load_checkpoint(found[-1], modules, optimizer, ema)
    saved = extra.get("resume_key")
    if saved is not None and saved != json.loads(json.dumps(cfg.resume_key())):
        logger.warning("Resuming %s with different settings %s (checkpoint: %s).", stage_dir, cfg.resume_key(), saved)
    if log_path.exists():  # drop log lines written after that checkpoint
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    logger.info("Resumed %s from %s at step %d.", stage_dir.name, found[-1].name, step)
    return step


def _loop(
    stage: str,
    stage_dir: Path,
    cfg: StageConfig,
    start_step: int,
    step_fn: Callable[[int], dict[str, float]],
    save_fn: Callable[[int], None],
    validate_fn: Callable[[int], None] | None = None,
    step_callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Run steps [start_step, max_steps): log losses to loss_log.jsonl, checkpoint, validate. Returns the losses.
    `step_callback(step)` runs before each step in this thread (e.g. to adapt ``torch.set_num_threads``)."""
    losses: list[float] = []
    window: list[float] = []
    t0 = time.time()
    log_path = stage_dir / "loss_log.jsonl"
    with open(log_path, "a") as log:
        for step in range(start_step, cfg.max_steps):
            if step_callback is not None:
                step_callback(step)
            out = step_fn(step)
            loss = out["loss"]
            if not math.isfinite(loss):
                raise FloatingPointError(f"{stage}: loss became {loss} at step {step}; lower the learning rate.")
            losses.append(loss)
            window.append(loss)
            log.write(
                json.dumps(
                    {"step": step, **{k: round(v, 6) for k, v in out.items()}, "time": round(time.time() - t0, 2)}
                )
                + "\n"
            )
            log.flush()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                rate = (time.time() - t0) / (done - start_step)
                logger.info(
                    "%s step %d/%d loss %.5f (%.2f s/step)", stage, done, cfg.max_steps, float(np.mean(window)), rate
                )
                window = []
            if done % cfg.checkpointing_steps == 0 or done == cfg.max_steps:
                save_fn(done)
                _prune(stage_dir, cfg.checkpoints_total_limit)
            if (
                validate_fn is not None
                and cfg.validation_steps
                and done % cfg.validation_steps == 0
                and done < cfg.max_steps
            ):
                validate_fn(done)
    return losses


def stage_wall_clock(stage_dir: Path) -> dict[str, float]:
    """Training wall-clock of a stage from its loss log: the sum over sessions (a session restarts the log's
    ``time`` column) of the time to its last kept step; steps discarded by a resume are not counted."""
    path = Path(stage_dir) / "loss_log.jsonl"
    if not path.is_file():
        return {"steps": 0, "wall_clock_s": 0.0, "sessions": 0}
    total, last, sessions, steps = 0.0, None, 0, 0
    for line in path.read_text().splitlines():
        t = json.loads(line)["time"]
        if last is None or t < last:
            total += last or 0.0
            sessions += 1
        last, steps = t, steps + 1
    return {"steps": steps, "wall_clock_s": round(total + (last or 0.0), 1), "sessions": sessions}


def _write_run_info(stage_dir: Path, info: dict[str, Any]) -> None:
    path = stage_dir / "run_info.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(info)
    path.write_text(json.dumps(runs, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: VAE
# ----------------------------------------------------------------------------------------------------------------


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def face_weight_map(kps: torch.Tensor, size: int, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, size, size): 1 + `weight` near the eyes, nose and mouth (Gaussian bumps of
    0.35 interocular distances around the 5 keypoints and the mouth centre), so that a small autoencoder spends
    its capacity on the details that carry identity and expression. Keypoints: (B, 5, 2) pixel coordinates."""
    from emojidiff_pipeline.train.stage1 import keypoint_bumps

    pts = torch.cat([kps, kps[:, 3:5].mean(1, keepdim=True)], 1)  # (B, 6, 2)
    iod = (kps[:, 1] - kps[:, 0]).norm(dim=-1).clamp_min(1.0)  # (B,)
    return 1.0 + weight * keypoint_bumps(pts, 0.35 * iod, (size, size), size)


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    generator: torch.Generator,
    cfg: StageConfig,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted L1 reconstruction + weighted L1 on image gradients (sharp edges) + KL to N(0, I) per latent
    element. `weights` (B, 1, H, W), e.g. :func:`face_weight_map`; None weighs every pixel equally."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    rec = vae.decode(z).sample
    w = torch.ones_like(x[:, :1]) if weights is None else weights
    l1 = ((rec - x).abs() * w).mean() / w.mean()
    (gx, gy), (rx, ry) = _image_gradients(x), _image_gradients(rec)
    wx, wy = w[..., :, 1:], w[..., 1:, :]
    grad = 0.5 * (((rx - gx).abs() * wx).mean() / wx.mean() + ((ry - gy).abs() * wy).mean() / wy.mean())
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    return {"loss": l1 + cfg.grad_weight * grad + cfg.kl_weight * kl, "l1": l1, "grad": grad, "kl": kl}


def train_vae(
    data: CollectionData,
    config: BaseModelConfig,
    cfg: StageConfig,
    stage_dir: Path,
    resume: bool = False,
    step_callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Train the VAE on the collection's images (random horizontal flips, face-weighted loss from the collection's
    keypoints); writes checkpoints and ``final/``."""
    stage_dir = Path(stage_dir)
    torch.manual_seed(cfg.seed)
    vae = build_vae(config)
    vae.train()
    optimizer = _make_optimizer(list(vae.parameters()), cfg)
    start = _start(stage_dir, {"vae": vae}, optimizer, cfg, resume)
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    _write_run_info(stage_dir, {"start_step": start, "num_images": len(data), "config": dataclasses.asdict(cfg),
                                "params": count_parameters(vae), "threads": torch.get_num_threads()})  # fmt: skip

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step).numpy()
        x = images_to_tensor(data.images[rows])
        weights = face_weight_map(torch.from_numpy(data.kps[rows]), x.shape[-1], cfg.face_weight)
        flip = (torch.rand(x.shape[0], generator=g) < 0.5)[:, None, None, None]
        x, weights = torch.where(flip, x.flip(-1), x), torch.where(flip, weights.flip(-1), weights)
        _set_lr(optimizer, cfg, step)
        out = vae_loss(vae, x, g, cfg, weights if cfg.face_weight > 0 else None)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in out.items()}

    def save_fn(done: int) -> None:
        save_checkpoint(
            stage_dir / f"checkpoint-{done}", {"vae": vae}, optimizer, done, {"resume_key": cfg.resume_key()}
        )

    losses = _loop("vae", stage_dir, cfg, start, step_fn, save_fn, step_callback=step_callback)
    vae.eval()
    scaling = latent_scaling_factor(vae, data)
    vae.register_to_config(scaling_factor=scaling)
    shutil.rmtree(stage_dir / "final", ignore_errors=True)
    vae.save_pretrained(stage_dir / "final")
    logger.info("VAE done: scaling_factor %.4f written to %s.", scaling, stage_dir / "final")
    return losses


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, data: CollectionData, n: int = 1024, batch_size: int = 64) -> float:
    """1 / std of the latent means over (up to) `n` evenly spaced collection images (as SD's 0.18215)."""
    idx = np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int)
    zs = [
        vae.encode(images_to_tensor(data.images[idx[i : i + batch_size]])).latent_dist.mean
        for i in range(0, len(idx), batch_size)
    ]
    return float(1.0 / torch.cat(zs).std().clamp_min(1e-6))


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, data: CollectionData, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Scaled latent means and standard deviations of every image: ``{"mean", "std"}`` (N, C, h, w) float32."""
    vae.eval()
    means, stds = [], []
    for i in range(0, len(data), batch_size):
        dist = vae.encode(images_to_tensor(data.images[i : i + batch_size])).latent_dist
        means.append(dist.mean * vae.config.scaling_factor)
        stds.append(dist.std * vae.config.scaling_factor)
    return {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}


def load_or_encode_latents(vae_dir: Path, data: CollectionData, cache_dir: Path) -> dict[str, torch.Tensor]:
    """The latent cache ``latents-<hash>.safetensors`` (hash of the VAE weights and the manifest); encoded once."""
    h = hashlib.sha256(_weights_file(vae_dir).read_bytes())
    h.update((vae_dir / "config.json").read_bytes())
    h.update(data.fingerprint.encode())
    path = Path(cache_dir) / f"latents-{h.hexdigest()[:16]}.safetensors"
    if not path.exists():
        t0 = time.time()
        vae = AutoencoderKL.from_pretrained(vae_dir)
        cache = encode_latents(vae, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(cache, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        logger.info("Encoded %d latents in %.1f s -> %s", len(data), time.time() - t0, path)
    return load_file(path)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: text encoders + UNet
# ----------------------------------------------------------------------------------------------------------------


def tokenize(tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, model_max_length), padded and truncated as the SDXL pipeline does."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompt_tokens(
    text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection, ids: torch.Tensor, ids_2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's prompt encoding with gradients: penultimate hidden states of both encoders concatenated
    (B, L, C1 + C2) and ``text_encoder_2``'s projected pooled output (B, P); equals ``encode_prompt``'s."""
    h1 = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out2 = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds


def add_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning for uncropped square training images: (B, 6) = (S, S, 0, 0, S, S)."""
    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).expand(
        batch, -1
    )


def diffusion_loss_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction, min(SNR, gamma) /
    (SNR + 1) for v prediction; ones if gamma == 0."""
    if not snr_gamma:
        return torch.ones(timesteps.shape)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1.0 - alpha_bar)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=snr_gamma) / (snr + 1.0)
    return torch.clamp(snr, max=snr_gamma) / snr


def diffusion_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    return noise


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


def train_unet(
    data: CollectionData,
    latents: dict[str, torch.Tensor],
    vae_dir: Path,
    config: BaseModelConfig,
    cfg: StageConfig,
    stage_dir: Path,
    resume: bool = False,
    step_callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Train the two text encoders and the UNet jointly with the diffusion loss of `config.prediction_type` on cached latents (caption dropout to
    the zero prompt for classifier-free guidance, optional Min-SNR weighting and EMA); writes checkpoints and
    ``final/`` (tokenizer, text_encoder, text_encoder_2, unet; EMA weights when enabled)."""
    stage_dir = Path(stage_dir)
    if latents["mean"].shape[0] != len(data):
        raise ValueError(f"{latents['mean'].shape[0]} cached latents for {len(data)} images.")
    expected = (config.latent_channels, config.latent_size, config.latent_size)
    if tuple(latents["mean"].shape[1:]) != expected:
        raise ValueError(
            f"Cached latents have shape {tuple(latents['mean'].shape[1:])}, the config expects {expected}."
        )
    tokenizer = build_tokenizer(sorted(set(data.captions)), model_max_length=config.max_length)
    torch.manual_seed(cfg.seed)
    text_encoder, text_encoder_2 = build_text_encoders(config, tokenizer)
    unet = build_unet(config)
    modules = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2, "unet": unet}
    for m in modules.values():
        m.train()
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = _make_optimizer(params, cfg)
    ema = EMA(modules, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = _start(stage_dir, modules, optimizer, cfg, resume, ema)
    tokenizer.save_pretrained(stage_dir / "tokenizer")
    noise_scheduler = build_noise_scheduler(config)

    captions = sorted(set(data.captions))
    position = {c: i for i, c in enumerate(captions)}
    caption_index = torch.tensor([position[c] for c in data.captions])
    ids = tokenize(tokenizer, captions)  # (U, L): both tokenizers are the same vocabulary
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    time_ids = add_time_ids(config.resolution, cfg.batch_size)
    _write_run_info(stage_dir, {"start_step": start, "num_images": len(data), "num_captions": len(captions),
                                "vocab_size": len(tokenizer), "config": dataclasses.asdict(cfg),
                                "params": {k: count_parameters(m) for k, m in modules.items()},
                                "threads": torch.get_num_threads()})  # fmt: skip

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step)
        b = rows.shape[0]
        x0 = latents["mean"][rows] + latents["std"][rows] * torch.randn(latents["mean"][rows].shape, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        keep = torch.rand(b, generator=g) >= cfg.caption_dropout
        _set_lr(optimizer, cfg, step)
        tok = ids[caption_index[rows]]
        prompt_embeds, pooled = encode_prompt_tokens(text_encoder, text_encoder_2, tok, tok)
        prompt_embeds = prompt_embeds * keep[:, None, None]  # dropped captions -> the zero prompt
        pooled = pooled * keep[:, None]
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        pred = unet(
            noisy, timesteps, prompt_embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids[:b]}
        ).sample
        target = diffusion_target(noise_scheduler, x0, noise, timesteps)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * diffusion_loss_weights(noise_scheduler, timesteps, cfg.snr_gamma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        return {"loss": float(loss.detach()), "mse": float(per_sample.detach().mean())}

    def save_fn(done: int) -> None:
        save_checkpoint(
            stage_dir / f"checkpoint-{done}", modules, optimizer, done, {"resume_key": cfg.resume_key()}, ema
        )

    def validate_fn(done: int) -> None:
        sample_grid(stage_dir / "samples" / f"step-{done:06d}.png", vae_dir, tokenizer, modules, ema, config)

    losses = _loop("unet", stage_dir, cfg, start, step_fn, save_fn, validate_fn, step_callback)
    final = stage_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    with ema.applied() if ema is not None else nullcontext():
        for name, m in modules.items():
            m.eval()
            m.save_pretrained(final / name)
    tokenizer.save_pretrained(final / "tokenizer")
    if cfg.validation_steps:
        sample_grid(stage_dir / "samples" / "final.png", vae_dir, tokenizer, modules, None, config, final_dir=final)
    return losses


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
            out = pipe([prompt] * len(seeds), num_inference_steps=steps, guidance_scale=guidance_scale, generator=g,
                       height=config.resolution, width=config.resolution, output_type="np").images  # fmt: skip
            images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
    for k, m in modules.items():
        m.train(training[k])
    save_grid(images, path, cols=len(seeds))
    logger.info("Samples -> %s", path)


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: image encoder (instance contrast)
# ----------------------------------------------------------------------------------------------------------------


def _template_geometry(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye and nose targets (3, 2) and the soft mask of the pipeline's 224 px ``"eyes_nose"`` expression crop
    (:func:`emojidiff_pipeline.face.expression_template`), resized to `size`."""
    from emojidiff_pipeline.face import expression_mask, expression_template

    dst = torch.from_numpy(expression_template(224).astype(np.float32)) * (size / 224.0)
    mask = torch.from_numpy(expression_mask(224, "eyes_nose"))[None, None]
    mask = F.interpolate(mask, size=(size, size), mode="area")[0, 0]
    return dst, mask


def _similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (B, 2, 3) mapping points `src` (B, 5, 2) onto `dst` (B, 5, 2) (Umeyama 1991)."""
    ms, md = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - ms, dst - md
    var = s.pow(2).sum((1, 2))
    a = (s * d).sum((1, 2)) / var  # scale * cos
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / var  # scale * sin
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], 1)  # (B, 2, 2)
    t = md[:, 0] - (rot @ ms[:, 0, :, None])[..., 0]
    return torch.cat([rot, t[..., None]], -1)


def _warp(images: torch.Tensor, out_to_in: torch.Tensor, out_size: int, fill: float) -> torch.Tensor:
    """Warp (B, 3, H, W) with pixel-coordinate affine maps output -> input (B, 2, 3); outside filled with `fill`."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(out_size, dtype=torch.float32), torch.arange(out_size, dtype=torch.float32), indexing="ij"
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)  # (1, P, 3) pixel centres
    src = pts @ out_to_in.transpose(1, 2)  # (B, P, 2) input pixel coordinates
    grid = torch.stack([(src[..., 0] + 0.5) / w * 2 - 1, (src[..., 1] + 0.5) / h * 2 - 1], -1).reshape(
        b, out_size, out_size, 2
    )
    out = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def _invert_affine(m: torch.Tensor) -> torch.Tensor:
    full = torch.cat([m, torch.tensor([0.0, 0.0, 1.0]).expand(m.shape[0], 1, 3)], 1)
    return torch.linalg.inv(full)[:, :2]


def make_views(images: torch.Tensor, kps: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random view per image for instance contrast: (B, 3, H, W) in [0, 1] -> (B, 3, size, size) in [0, 1].

    Half the views are face crops as the expression branch sees them (the ``"eyes_nose"`` crop: alignment on the
    jittered eyes and nose, grey outside the soft face mask); the others are random crops of the whole photo
    (scale, shift, rotation). All views get colour jitter (brightness, contrast, saturation) and, with probability
    0.2, grayscale. No flips: left and right carry meaning (winks).
    """
    b, _, h, w = images.shape
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    # template views: kps (in input pixels) -> template (in output pixels)
    dst, mask = _template_geometry(size)
    jitter = (u(b, 5, 2) - 0.5) * 2.0 * (0.03 * w)
    to_template = _similarity((kps + jitter)[:, :3], dst.expand(b, 3, 2))
    template_map = _invert_affine(to_template)
    # photo views: random similarity around the centre
    scale = 0.8 + 0.25 * u(b)  # output covers 1/scale of the photo ... zoom in or out a little
    angle = (u(b) - 0.5) * 2.0 * math.radians(12.0)
    shift = (u(b, 2) - 0.5) * 2.0 * 0.08 * w
    cos, sin = torch.cos(angle) / scale * (w / size), torch.sin(angle) / scale * (w / size)
    c_out, c_in = (size - 1) / 2.0, torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0])
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    t = c_in + shift - (rot @ torch.full((b, 2, 1), c_out))[..., 0]
    photo_map = torch.cat([rot, t[..., None]], -1)
    use_template = u(b) < 0.5
    maps = torch.where(use_template[:, None, None], template_map, photo_map)
    views = _warp(images, maps, size, fill=0.5)
    views = torch.where(use_template[:, None, None, None], views * mask + 0.5 * (1 - mask), views)
    # colour jitter
    brightness = 1.0 + (u(b, 1, 1, 1) - 0.5) * 0.4
    contrast = 1.0 + (u(b, 1, 1, 1) - 0.5) * 0.4
    saturation = 1.0 + (u(b, 1, 1, 1) - 0.5) * 0.6
    views = views * brightness
    mean = views.mean((1, 2, 3), keepdim=True)
    views = (views - mean) * contrast + mean
    gray = (views * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    views = (views - gray) * saturation + gray
    views = torch.where(u(b, 1, 1, 1) < 0.2, gray.expand_as(views), views)
    return views.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over 2B views (Chen et al. 2020, eq. 1)."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def normalize_for_encoder(views: torch.Tensor, feature_extractor: CLIPImageProcessor) -> torch.Tensor:
    """[0, 1] views -> the feature extractor's normalisation."""
    mean = torch.tensor(feature_extractor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std).view(1, 3, 1, 1)
    return (views - mean) / std


def train_image_encoder(
    data: CollectionData,
    config: BaseModelConfig,
    cfg: StageConfig,
    stage_dir: Path,
    resume: bool = False,
    step_callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Train the CLIP vision encoder by instance contrast between two random views of each collection photo
    (:func:`make_views`, :func:`nt_xent`); writes checkpoints and ``final/`` (image_encoder, feature_extractor)."""
    stage_dir = Path(stage_dir)
    torch.manual_seed(cfg.seed)
    encoder = build_image_encoder(config)
    feature_extractor = build_feature_extractor(config)
    encoder.train()
    optimizer = _make_optimizer(list(encoder.parameters()), cfg)
    start = _start(stage_dir, {"image_encoder": encoder}, optimizer, cfg, resume)
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    size = config.vision_image_size
    _write_run_info(stage_dir, {"start_step": start, "num_images": len(data), "config": dataclasses.asdict(cfg),
                                "params": count_parameters(encoder), "threads": torch.get_num_threads()})  # fmt: skip

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step).numpy()
        x = torch.from_numpy(data.images[rows]).permute(0, 3, 1, 2).float() / 255.0
        kps = torch.from_numpy(data.kps[rows])
        v1 = normalize_for_encoder(make_views(x, kps, size, g), feature_extractor)
        v2 = normalize_for_encoder(make_views(x, kps, size, g), feature_extractor)
        _set_lr(optimizer, cfg, step)
        emb = encoder(pixel_values=torch.cat([v1, v2])).image_embeds
        loss = nt_xent(emb[: len(rows)], emb[len(rows) :], cfg.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach())}

    def save_fn(done: int) -> None:
        save_checkpoint(
            stage_dir / f"checkpoint-{done}",
            {"image_encoder": encoder},
            optimizer,
            done,
            {"resume_key": cfg.resume_key()},
        )

    losses = _loop("image_encoder", stage_dir, cfg, start, step_fn, save_fn, step_callback=step_callback)
    final = stage_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    encoder.eval().save_pretrained(final / "image_encoder")
    feature_extractor.save_pretrained(final / "feature_extractor")
    return losses


# ----------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------


def load_base_config(run_dir: Path) -> BaseModelConfig:
    return BaseModelConfig.from_dict(json.loads((Path(run_dir) / _CONFIG_FILE).read_text()))


def save_base_config(run_dir: Path, config: BaseModelConfig) -> None:
    """Write the run's model config, or check that it matches the one already there."""
    path = Path(run_dir) / _CONFIG_FILE
    if path.exists():
        saved = load_base_config(run_dir)
        if saved != config:
            raise ValueError(
                f"{path} holds a different model config ({saved}); use a new `--out` or the same `--size`."
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=1))


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
    shutil.copy(run_dir / _CONFIG_FILE, tmp / _CONFIG_FILE)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return pipe


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
