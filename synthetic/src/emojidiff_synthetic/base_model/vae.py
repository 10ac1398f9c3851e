"""Stage 1 of the base model: the VAE (face-weighted reconstruction loss), its latent scaling and the latent cache."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
)
from safetensors.torch import load_file, save_file

from emojidiff_pipeline.train.checkpoints import weights_file
from emojidiff_pipeline.train.diffusion import BatchSampler, step_generator

from .components import build_vae, count_parameters
from .config import BaseModelConfig
from .data import CollectionData, images_to_tensor
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


def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def face_weight_map(kps: torch.Tensor, size: int, weight: float) -> torch.Tensor:
    """Per-pixel loss weights (B, 1, size, size): 1 + `weight` near the eyes, nose and mouth (Gaussian bumps of
    0.35 interocular distances around the 5 keypoints and the mouth centre), so that a small autoencoder spends
    its capacity on the details that carry identity and expression. Keypoints: (B, 5, 2) pixel coordinates."""
    from emojidiff_pipeline.train.diffusion import keypoint_bumps

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
    optimizer = make_optimizer(list(vae.parameters()), cfg)
    start = start_stage(stage_dir, {"vae": vae}, optimizer, cfg, resume)
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    write_run_info(
        stage_dir,
        {
            "start_step": start,
            "num_images": len(data),
            "config": dataclasses.asdict(cfg),
            "params": count_parameters(vae),
            "threads": torch.get_num_threads(),
        },
    )

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step).numpy()
        x = images_to_tensor(data.images[rows])
        weights = face_weight_map(torch.from_numpy(data.kps[rows]), x.shape[-1], cfg.face_weight)
        flip = (torch.rand(x.shape[0], generator=g) < 0.5)[:, None, None, None]
        x, weights = torch.where(flip, x.flip(-1), x), torch.where(flip, weights.flip(-1), weights)
        set_lr(optimizer, cfg, step)
        out = vae_loss(vae, x, g, cfg, weights if cfg.face_weight > 0 else None)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in out.items()}

    def save_fn(done: int) -> None:
        save_stage_checkpoint(stage_dir, {"vae": vae}, optimizer, cfg, done)

    losses = run_loop("vae", stage_dir, cfg, start, step_fn, save_fn, step_callback=step_callback)
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
    h = hashlib.sha256(weights_file(vae_dir).read_bytes())
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
