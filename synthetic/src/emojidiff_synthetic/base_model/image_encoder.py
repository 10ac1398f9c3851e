"""Stage 3 of the base model: the expression branch's image encoder, trained by instance contrast (SimCLR, Chen et
al. 2020) between random views of collection photos."""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    CLIPImageProcessor,
)

from emojidiff_pipeline.train.diffusion import BatchSampler, step_generator

from .components import build_feature_extractor, build_image_encoder, count_parameters
from .config import BaseModelConfig
from .data import CollectionData
from .loop import (
    StageConfig,
    make_optimizer,
    run_loop,
    save_stage_checkpoint,
    set_lr,
    start_stage,
    write_run_info,
)

logger = logging.getLogger(__name__)


def _template_geometry(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eye and nose targets (3, 2) and the soft mask of the pipeline's 224 px ``"eyes_nose"`` expression crop
    (:func:`emojidiff_pipeline.face.expression_template`), resized to `size`."""
    from emojidiff_pipeline.face_geometry import expression_mask, expression_template

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
    optimizer = make_optimizer(list(encoder.parameters()), cfg)
    start = start_stage(stage_dir, {"image_encoder": encoder}, optimizer, cfg, resume)
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    size = config.vision_image_size
    write_run_info(
        stage_dir,
        {
            "start_step": start,
            "num_images": len(data),
            "config": dataclasses.asdict(cfg),
            "params": count_parameters(encoder),
            "threads": torch.get_num_threads(),
        },
    )

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step).numpy()
        x = torch.from_numpy(data.images[rows]).permute(0, 3, 1, 2).float() / 255.0
        kps = torch.from_numpy(data.kps[rows])
        v1 = normalize_for_encoder(make_views(x, kps, size, g), feature_extractor)
        v2 = normalize_for_encoder(make_views(x, kps, size, g), feature_extractor)
        set_lr(optimizer, cfg, step)
        emb = encoder(pixel_values=torch.cat([v1, v2])).image_embeds
        loss = nt_xent(emb[: len(rows)], emb[len(rows) :], cfg.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss.detach())}

    def save_fn(done: int) -> None:
        save_stage_checkpoint(stage_dir, {"image_encoder": encoder}, optimizer, cfg, done)

    losses = run_loop("image_encoder", stage_dir, cfg, start, step_fn, save_fn, step_callback=step_callback)
    final = stage_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    encoder.eval().save_pretrained(final / "image_encoder")
    feature_extractor.save_pretrained(final / "feature_extractor")
    return losses
