"""What every diffusion trainer of the project shares (the adapter's stages and the synthetic base model's): step
randomness and batch order as pure functions of (seed, step), so a resumed run repeats the uninterrupted one; the
DDPM forward process and regression target of any scheduler; Min-SNR weights; the face-weighted loss map."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class BatchSampler:
    """Rows of each step's batch: epoch-wise permutations of ``range(n)`` seeded by (seed, epoch), read as one
    stream, so batch `step` depends on nothing but (n, batch_size, seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("Cannot sample batches from an empty data set.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
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
        """(batch_size,) row indices of batch `step`."""
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._perm(epoch)[offset])
        return torch.stack(out)


def training_noise_scheduler(sampler) -> DDPMScheduler:
    """The DDPM forward process with the pipeline scheduler's betas and prediction type, whatever sampler the pipeline
    ships with (diffusers' SDXL training scripts do the same): an Euler sampler's ``add_noise`` gives the unscaled
    ``x0 + sigma * noise`` and its ``get_velocity`` refuses integer timesteps."""
    return DDPMScheduler.from_config(sampler.config)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses at integer `timesteps` (B,): the noise, or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unsupported `prediction_type` {scheduler.config.prediction_type!r} (epsilon or v_prediction).")


def min_snr_weights(scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon prediction,
    min(SNR, gamma) / (SNR + 1) for v prediction; ones if gamma == 0."""
    if not snr_gamma:
        return torch.ones(timesteps.shape)
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1.0 - alpha_bar)
    if scheduler.config.prediction_type == "v_prediction":
        return torch.clamp(snr, max=snr_gamma) / (snr + 1.0)
    return torch.clamp(snr, max=snr_gamma) / snr


def keypoint_bumps(
    points: torch.Tensor, sigma: torch.Tensor, grid_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """(B, 1, h, w) in [0, 1]: the largest Gaussian bump (std `sigma` (B,), in pixels) over `points` (B, P, 2, pixel
    (x, y) at `image_size`), sampled at the centres of an h x w grid over the image (pixel centres when h = size)."""
    h, w = grid_size
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * image_size / h - 0.5
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * image_size / w - 0.5
    dx = xs.view(1, 1, 1, w) - points[..., 0].view(-1, points.shape[1], 1, 1)
    dy = ys.view(1, 1, h, 1) - points[..., 1].view(-1, points.shape[1], 1, 1)
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma.view(-1, 1, 1, 1) ** 2)).amax(1, keepdim=True)


def face_loss_weights(
    kps: torch.Tensor, latent_size: tuple[int, int], resolution: int, face_weight: float
) -> torch.Tensor:
    """Per-latent-cell loss weights (B, 1, h, w): ``1 + face_weight * g`` with g the :func:`keypoint_bumps` of the five
    keypoints `kps` (B, 5, 2, pixels at `resolution`), sigma = 0.35 x eye distance."""
    sigma = 0.35 * (kps[:, 0] - kps[:, 1]).norm(dim=-1).clamp(min=1.0)
    return 1.0 + face_weight * keypoint_bumps(kps, sigma, tuple(latent_size), resolution)
