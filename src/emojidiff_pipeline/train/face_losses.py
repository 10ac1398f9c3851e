"""Face losses on the one-step prediction: expression and identity read back from the generated face.

The diffusion loss weighs every latent cell alike, and a mouth corner or an eyelid is a few cells of a face; a
branch can lower it a lot while the expression it draws is still wrong. These losses read what a differentiable face
model sees in the image the UNet predicts in one step (ControlNet++'s cycle consistency, PuLID's identity loss):

    x0 = one_step_x0(noisy, prediction, t)                        # (B, 4, h, w), from the UNet's prediction
    image = vae.decode(x0 / scaling_factor)                       # (B, 3, H, W) in about [-1, 1]
    crop = warp_faces(image, target keypoints, model template)    # (B, 3, S, S), differentiable in `image`
    expression loss = |E(crop) - E(crop of the decoded target)|   # E: an expression estimator, (B, C)
    identity loss   = 1 - cos(F(crop), F(crop of the decoded target))  # F: a face recognizer, (B, D)
                      (or 1 - cos(F(crop), reference embedding): ``identity_anchor="reference"``)
    alignment loss  = 1 - cos(F(crop), stopgrad F(crop of x0 with the expression branch off))  # ICA
                      (``alignment_mask=True``: both images with the eyes, brows and mouth greyed out first)

Only rows whose timestep is at most ``max_timestep`` count (a one-step x0 from a very noisy latent is a blur).
Both models are frozen and should not be the ones evaluation measures with. A model is a
:class:`DifferentiableFaceModel`: a torch module over aligned crops plus the 5-point template it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..face_geometry import _similarity_matrix, arcface_template


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"`{name}` must be a (N, 3, H, W) tensor, got {got}.")


def _check_keypoints(kps, n: int) -> np.ndarray:
    kps = np.asarray(kps.detach().cpu() if isinstance(kps, torch.Tensor) else kps, dtype=np.float64)
    if kps.shape != (n, 5, 2):
        raise ValueError(f"`kps` must have shape ({n}, 5, 2) (5 face points per image, pixels), got {kps.shape}.")
    if not np.all(np.isfinite(kps)):
        raise ValueError("`kps` contains non-finite values.")
    return kps


def _weighted_factor_mean(error: torch.Tensor, weights: tuple[float, ...] | None) -> torch.Tensor:
    """Mean of `error` (N, C) over rows, and over factors weighted by `weights` (C,) (None: a plain mean)."""
    if weights is None:
        return error.mean()
    if len(weights) != error.shape[-1]:
        raise ValueError(
            f"`expression_factor_weights` has {len(weights)} weights but the expression model gives "
            f"{error.shape[-1]} factors."
        )
    w = torch.tensor(weights, dtype=error.dtype, device=error.device)
    return (error * w).sum(-1).mean() / w.sum()


def mask_expression_regions(
    images: torch.Tensor, kps, eye_radius: float = 0.45, mouth_radius: float = 0.35
) -> torch.Tensor:
    """`images` (B, 3, H, W) in [-1, 1] with the expression's regions set to 0 (mid grey): a disc around each eye
    point (radius `eye_radius` x the eye distance, which takes in the brow) and a capsule around the segment between
    the mouth corners (radius `mouth_radius` x the eye distance). `kps` (B, 5, 2): the 5 face points in pixels. What
    an identity comparison sees when it must leave the expression out; gradients pass through the other pixels."""
    _check_images(images)
    k = torch.as_tensor(_check_keypoints(kps, len(images)), dtype=torch.float32, device=images.device)
    h, w = images.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=images.device),
        torch.arange(w, dtype=torch.float32, device=images.device),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys], dim=-1)[None]  # (1, H, W, 2)
    eye_distance = (k[:, 1] - k[:, 0]).norm(dim=-1).clamp_min(1.0)[:, None, None]  # (B, 1, 1)
    eyes = ((pixels[:, None] - k[:, :2, None, None]).norm(dim=-1) <= (eye_radius * eye_distance)[:, None]).any(1)
    left, right = k[:, 3, None, None], k[:, 4, None, None]  # (B, 1, 1, 2)
    along = ((pixels - left) * (right - left)).sum(-1) / ((right - left) ** 2).sum(-1).clamp_min(1e-6)
    nearest = left + along.clamp(0, 1)[..., None] * (right - left)
    mouth = (pixels - nearest).norm(dim=-1) <= mouth_radius * eye_distance
    return images.masked_fill((eyes | mouth)[:, None], 0.0)


def warp_faces(images: torch.Tensor, kps, template: np.ndarray, size: int) -> torch.Tensor:
    """Similarity-align each image's face onto `template`: differentiable in `images`.

    images: (N, 3, H, W) in [-1, 1]; kps: (N, 5, 2) pixel (x, y) in `images`, insightface order; template: (5, 2)
    where the points land in a `size` crop. -> (N, 3, size, size). Same geometry and bilinear sampling as
    insightface's ``norm_crop`` (cv2 ``warpAffine``, pixel centres at integers, black outside the image).
    """
    _check_images(images)
    n, _, h, w = images.shape
    kps = _check_keypoints(kps, n)
    template = np.asarray(template, dtype=np.float64)
    inverse = []
    for k in kps:
        m = np.vstack([_similarity_matrix(k, template), [0.0, 0.0, 1.0]])
        inverse.append(np.linalg.inv(m)[:2])  # crop pixel -> image pixel
    inverse = torch.as_tensor(np.stack(inverse), dtype=images.dtype, device=images.device)  # (N, 2, 3)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=images.dtype, device=images.device),
        torch.arange(size, dtype=images.dtype, device=images.device),
        indexing="ij",
    )
    crop_points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)  # (1, S*S, 3)
    source = crop_points @ inverse.transpose(1, 2)  # (N, S*S, 2) image pixels
    scale = torch.tensor([w, h], dtype=images.dtype, device=images.device)
    grid = ((2 * source + 1) / scale - 1).view(n, size, size, 2)  # grid_sample's align_corners=False convention
    # sample (x + 1) with zero padding, so outside the image is -1 (black), as norm_crop's border value 0
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


class DifferentiableFaceModel(nn.Module):
    """A frozen torch face model over aligned crops, for training losses.

    module: (N, 3, S, S) RGB in [-1, 1] -> (N, D) (an expression code, or an identity embedding); `template` (5, 2)
    says where the 5 points land in its S x S crop (default: insightface's ArcFace template, as ArcFace models use).
    ``model(images, kps)`` aligns (N, 3, H, W) images in [-1, 1] with their (N, 5, 2) keypoints and runs the module.
    """

    def __init__(self, module: nn.Module, name: str, crop_size: int = 112, template: np.ndarray | None = None):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ValueError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
        self.module = module.eval().requires_grad_(False)
        self.name = name
        self.crop_size = int(crop_size)
        self.template = np.asarray(arcface_template(crop_size) if template is None else template, np.float64)
        if self.template.shape != (5, 2):
            raise ValueError(f"`template` must have shape (5, 2), got {self.template.shape}.")

    def train(self, mode: bool = True):  # always frozen: BatchNorm statistics and dropout stay in eval mode
        return super().train(False)

    def forward(self, images: torch.Tensor, kps) -> torch.Tensor:
        crops = warp_faces(images, kps, self.template, self.crop_size)
        return self.module(crops.to(next(self.module.parameters()).dtype))


def one_step_x0(scheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x0 predicted in one step from `noisy` (B, C, h, w) at integer `timesteps` (B,) by a DDPM-family scheduler's
    epsilon or v `prediction`."""
    alphas = scheduler.alphas_cumprod.to(noisy.device, torch.float32)[timesteps.to(noisy.device)]
    a = alphas.sqrt().view(-1, 1, 1, 1)
    s = (1 - alphas).sqrt().view(-1, 1, 1, 1)
    noisy, prediction = noisy.float(), prediction.float()
    if scheduler.config.prediction_type == "epsilon":
        return (noisy - s * prediction) / a
    if scheduler.config.prediction_type == "v_prediction":
        return a * noisy - s * prediction
    raise ValueError(f"Unsupported `prediction_type` {scheduler.config.prediction_type!r} (epsilon or v_prediction).")


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) scaled latents -> (B, 3, H, W) images in about [-1, 1] (not clamped: gradients pass)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = latents / vae.config.scaling_factor + shift
    return vae.decode(z.to(vae.dtype)).sample.float()


@torch.no_grad()
def target_face_readings(
    vae,
    latents: torch.Tensor,
    kps: torch.Tensor,
    config: "FaceLossConfig",
    expression_model=None,
    identity_model=None,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """What the face losses compare the prediction with, read from every decoded target once: the cache's latents
    (N, C', h, w) and target keypoints (N, 5, 2) give ``"target_expression"`` (N, C), the expression model's reading,
    when the expression loss is on, and ``"target_identity"`` (N, D), the identity model's unit embedding, when the
    identity loss anchors on the target. CPU tensors; they depend on the row only, so a run reads them once instead
    of decoding the targets again at every step."""
    want_expression = config.expression_weight > 0
    want_identity = config.identity_weight > 0 and config.identity_anchor == "target"
    if want_expression and expression_model is None:
        raise ValueError("`expression_weight` > 0 needs an `expression_model`.")
    if want_identity and identity_model is None:
        raise ValueError("`identity_weight` > 0 with `identity_anchor='target'` needs an `identity_model`.")
    device = next(vae.parameters()).device
    out = {"target_expression": [], "target_identity": []}
    for start in range(0, len(latents) if want_expression or want_identity else 0, batch_size):
        image = decode_latents(vae, latents[start : start + batch_size].to(device).float())
        k = kps[start : start + batch_size]
        if want_expression:
            out["target_expression"].append(expression_model(image, k).float().cpu())
        if want_identity:
            out["target_identity"].append(F.normalize(identity_model(image, k).float(), dim=-1).cpu())
    return {key: torch.cat(values) for key, values in out.items() if values}


@dataclass
class FaceLossConfig:
    """Weights of the face losses (0: off) and the largest timestep they apply at.

    `identity_anchor`: ``"target"`` compares F of the prediction with F of the decoded target; ``"reference"`` with
    the triplet's reference embedding (the cache's ``identity``, so F must be the network of the recognizer that
    encoded it). `alignment_weight` > 0 (ICA) needs the prediction with the expression branch off as well;
    `alignment_mask` compares the two with their eyes, brows and mouth greyed out (:func:`mask_expression_regions`),
    so the alignment pulls the identity without pulling the face toward the expression-off one.
    `expression_factor_weights` (C,) weighs each factor of the expression model's code in the expression loss
    (None: all 1), e.g. to pull gaze and brows, which a one-step x0 shows faintly; the loss is then
    ``sum_c w_c |E_c - E_c(target)| / sum_c w_c``, so the weights set the mix and `expression_weight` the size.
    `max_rows` caps the rows of each batch the losses read (the first ones with ``t <= max_timestep``; batches are
    drawn at random, so they are a random subset): decoding and reading the face is most of a face-loss step, so
    half the rows cost about half the time, at a noisier gradient of the same mean (None: every qualifying row)."""

    expression_weight: float = 0.0
    identity_weight: float = 0.0
    max_timestep: int = 400
    alignment_weight: float = 0.0
    identity_anchor: str = "target"
    expression_factor_weights: tuple[float, ...] | None = None
    alignment_mask: bool = False
    max_rows: int | None = None

    def __post_init__(self):
        if self.expression_factor_weights is not None:
            w = self.expression_factor_weights
            ok = isinstance(w, (list, tuple)) and len(w) > 0
            ok = ok and all(isinstance(v, (int, float)) and np.isfinite(v) and v >= 0 for v in w) and sum(w) > 0
            if not ok:
                raise ValueError(
                    f"`expression_factor_weights` must be a non-empty sequence of finite numbers >= 0 with a "
                    f"positive sum, got {w!r}."
                )
            if self.expression_weight == 0:
                raise ValueError("`expression_factor_weights` has no effect with `expression_weight` 0.")
            self.expression_factor_weights = tuple(float(v) for v in w)
        if not isinstance(self.alignment_mask, bool):
            raise ValueError(f"`alignment_mask` must be True or False, got {self.alignment_mask!r}.")
        if self.alignment_mask and self.alignment_weight == 0:
            raise ValueError("`alignment_mask` has no effect with `alignment_weight` 0.")
        if self.identity_anchor not in ("target", "reference"):
            raise ValueError(f"`identity_anchor` must be 'target' or 'reference', got {self.identity_anchor!r}.")
        for name in ("expression_weight", "identity_weight", "alignment_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if isinstance(self.max_timestep, bool) or not isinstance(self.max_timestep, int) or self.max_timestep < 0:
            raise ValueError(f"`max_timestep` must be an int >= 0, got {self.max_timestep!r}.")
        rows = self.max_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"`max_rows` must be None or an int >= 1, got {rows!r}.")

    @property
    def enabled(self) -> bool:
        return self.expression_weight > 0 or self.identity_weight > 0 or self.alignment_weight > 0

    @property
    def needs_identity_model(self) -> bool:
        return self.identity_weight > 0 or self.alignment_weight > 0


def face_loss_rows(timesteps: torch.Tensor, config: FaceLossConfig) -> torch.Tensor:
    """Indices (R,) into a batch's `timesteps` (B,) of the rows the face losses read: ``t <= config.max_timestep``,
    the first ``config.max_rows`` of them."""
    return (timesteps <= config.max_timestep).nonzero().flatten()[: config.max_rows]


def face_losses(
    vae,
    scheduler,
    noisy,
    prediction,
    latents,
    timesteps,
    kps,
    config: FaceLossConfig,
    expression_model: DifferentiableFaceModel | None = None,
    identity_model: DifferentiableFaceModel | None = None,
    prediction_off: torch.Tensor | None = None,
    reference_embeds: torch.Tensor | None = None,
    target_expression: torch.Tensor | None = None,
    target_identity: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted face losses of a batch, and their parts.

    noisy, prediction, latents: (B, C, h, w) (the UNet's input, its output, the clean target latents); timesteps
    (B,); kps (B, 5, 2) the target's keypoints in decoded-image pixels; `prediction_off` (B, C, h, w) the prediction
    with the expression branch off (alignment); `reference_embeds` (B, D) (``identity_anchor="reference"``);
    `target_expression` (B, C) and `target_identity` (B, D) the face models' readings of the decoded targets
    (:func:`target_face_readings`; None: decode the targets here).
    Returns ``{"total": scalar}`` plus ``"expression"`` / ``"identity"`` / ``"alignment"`` (unweighted means over
    the rows with ``t <= max_timestep``, at most ``config.max_rows`` of them) for the enabled losses; ``total`` is 0
    (with a graph) when no row qualifies.
    """
    if config.expression_weight > 0 and expression_model is None:
        raise ValueError("`expression_weight` > 0 needs an `expression_model`.")
    if config.needs_identity_model and identity_model is None:
        raise ValueError("`identity_weight` or `alignment_weight` > 0 needs an `identity_model`.")
    if config.alignment_weight > 0 and prediction_off is None:
        raise ValueError(
            "`alignment_weight` > 0 needs `prediction_off` (the prediction with the expression branch off)."
        )
    if config.identity_weight > 0 and config.identity_anchor == "reference" and reference_embeds is None:
        raise ValueError("`identity_anchor='reference'` needs `reference_embeds`.")
    rows = face_loss_rows(timesteps, config)
    total = prediction.float().sum() * 0.0
    out = {}
    if not config.enabled or len(rows) == 0:
        return {"total": total}
    idx = rows.to(prediction.device)
    x0 = one_step_x0(scheduler, noisy[idx.cpu()].to(prediction.device), prediction[idx], timesteps[rows])
    image = decode_latents(vae, x0)
    k = kps[rows.cpu()]
    reference = None
    if (config.expression_weight > 0 and target_expression is None) or (
        config.identity_weight > 0 and config.identity_anchor == "target" and target_identity is None
    ):
        with torch.no_grad():
            reference = decode_latents(vae, latents[rows.cpu()].to(prediction.device).float())
    if config.expression_weight > 0:
        with torch.no_grad():
            if target_expression is None:
                want = expression_model(reference, k)
            else:
                want = target_expression[rows.cpu()].to(prediction.device)
        error = (expression_model(image, k) - want).abs()  # (rows, C)
        out["expression"] = _weighted_factor_mean(error, config.expression_factor_weights)
        total = total + config.expression_weight * out["expression"]

    def embed(img: torch.Tensor, masked: bool = False) -> torch.Tensor:  # (rows, D) unit identity embeddings
        return F.normalize(identity_model(mask_expression_regions(img, k) if masked else img, k).float(), dim=-1)

    unmasked_alignment = config.alignment_weight > 0 and not config.alignment_mask
    got = embed(image) if config.identity_weight > 0 or unmasked_alignment else None
    if config.identity_weight > 0:
        with torch.no_grad():
            if config.identity_anchor == "reference":
                if reference_embeds.shape[-1] != got.shape[-1]:
                    raise ValueError(
                        f"`identity_anchor='reference'`: the reference embeddings are {reference_embeds.shape[-1]}-d "
                        f"but the identity model {identity_model.name!r} gives {got.shape[-1]}-d; it must be the "
                        "network of the recognizer that encoded the references (or use the 'target' anchor)."
                    )
                anchor = F.normalize(reference_embeds[rows.cpu()].to(got.device).float(), dim=-1)
            elif target_identity is not None:
                anchor = target_identity[rows.cpu()].to(got.device).float()
            else:
                anchor = embed(reference)
        out["identity"] = (1 - (got * anchor).sum(-1)).mean()
        total = total + config.identity_weight * out["identity"]
    if config.alignment_weight > 0:
        with torch.no_grad():
            x0_off = one_step_x0(
                scheduler, noisy[rows.cpu()].to(prediction.device), prediction_off[idx], timesteps[rows]
            )
            anchor_off = embed(decode_latents(vae, x0_off), config.alignment_mask)
        aligned = embed(image, masked=True) if config.alignment_mask else got
        out["alignment"] = (1 - (aligned * anchor_off).sum(-1)).mean()
        total = total + config.alignment_weight * out["alignment"]
    out["total"] = total
    return out
