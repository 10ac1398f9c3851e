"""Held-out validation of an adapter run: the seeded train / held-out split of the cache's rows, the held-out
diffusion loss with its two probes of the expression branch (and the face losses), and the best loss so far when a
run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..adapted_unet import AdaptedUNet
from .atomic import write_text_atomic
from .cache import adapted_prediction
from .diffusion import diffusion_target
from .face_losses import face_losses


def validation_rows(n: int, num_validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows) of the cache's `n` triplets: a seeded split, the same on every process."""
    if not 0 <= num_validation < n:
        raise ValueError(f"`num_validation` must be in [0, {n}) for {n} triplets, got {num_validation}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 1))
    return perm[num_validation:].sort().values, perm[:num_validation].sort().values


@torch.no_grad()
def validation_losses(
    adapted: AdaptedUNet,
    scheduler,
    cache: dict,
    rows: torch.Tensor,
    device,
    seed: int,
    batch_size: int,
    face: dict | None = None,
    model=None,
) -> dict[str, float]:
    """Held-out diffusion loss at fixed noise and evenly spread timesteps, and two probes of the expression branch:
    the loss with another held-out row's template (``template_swap``) and with the branch's null tokens
    (``no_expression``). A branch that uses its template has ``template_swap`` and ``no_expression`` above ``loss``.

    `face` (``{"vae", "config", "expression_model", "identity_model"}``, with the optional ``"target_expression"``
    / ``"target_identity"`` readings of :func:`~.face_losses.target_face_readings`) adds the face losses of the
    right-template prediction (``face_expression`` / ``face_identity``, means over the rows with
    ``t <= max_timestep``) and ``objective``: ``loss`` plus their weighted sum, what the best adapter is chosen on.
    """
    n = len(rows)
    g = torch.Generator().manual_seed(seed * 31 + 17)
    noise = torch.randn((n, *cache["latents"].shape[1:]), generator=g)
    timesteps = torch.linspace(0, scheduler.config.num_train_timesteps - 1, n).round().long()
    shift = max(1, n // 2)  # a derangement: row i takes the template of row i + n/2
    swapped = rows[(torch.arange(n) + shift) % n]
    sums = {"loss": 0.0, "loss_template_swap": 0.0, "loss_no_expression": 0.0}
    face_sums, face_rows = {}, 0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        r, t = rows[sl], timesteps[sl]
        latents = cache["latents"][r]
        noisy = scheduler.add_noise(latents, noise[sl], t)
        target = diffusion_target(scheduler, latents, noise[sl], t).to(device).float()
        text = cache["prompt_embeds"][cache["prompt_index"][r]]
        pooled = cache["pooled"][cache["prompt_index"][r]]
        ones = torch.ones(len(r), dtype=torch.bool)
        preds = {}
        for key, keep_exp, tpl in (
            ("loss", ones, None),
            ("loss_template_swap", ones, swapped[sl]),
            ("loss_no_expression", ~ones, None),
        ):
            preds[key] = adapted_prediction(
                adapted, cache, r, noisy, t, text, pooled, ones, keep_exp, device, template_rows=tpl, model=model
            )
            sums[key] += F.mse_loss(preds[key].float(), target, reduction="sum").item()
        if face is not None:
            parts = face_losses(
                face["vae"],
                scheduler,
                noisy,
                preds["loss"],
                latents,
                t,
                cache["target_kps"][r],
                face["config"],
                face["expression_model"],
                face["identity_model"],
                prediction_off=preds["loss_no_expression"],
                reference_embeds=cache["identity"][r][:, 0],
                target_expression=None if face.get("target_expression") is None else face["target_expression"][r],
                target_identity=None if face.get("target_identity") is None else face["target_identity"][r],
            )
            m = int((t <= face["config"].max_timestep).sum())
            for name, value in parts.items():
                if name != "total":
                    face_sums[name] = face_sums.get(name, 0.0) + value.item() * m
            face_rows += m
    total = n * cache["latents"][0].numel()
    out = {k: v / total for k, v in sums.items()}
    if face is not None:
        out.update({f"face_{k}": v / max(1, face_rows) for k, v in face_sums.items()})
        cfg = face["config"]
        out["objective"] = (
            out["loss"]
            + cfg.expression_weight * out.get("face_expression", 0.0)
            + cfg.identity_weight * out.get("face_identity", 0.0)
            + cfg.alignment_weight * out.get("face_alignment", 0.0)
        )
    return out


def best_validation(val_log: Path, start_step: int, rewrite: bool) -> tuple[float, int] | None:
    """(best validation loss, validations since it) from the lines of `val_log` before `start_step` (resume)."""
    if not val_log.exists():
        return None
    lines = []
    for ln in val_log.read_text().splitlines():
        try:
            lines.append(json.loads(ln))
        except json.JSONDecodeError:  # a torn last line from a crash while appending
            continue
    lines = [r for r in lines if r["step"] < start_step]
    if rewrite:  # drop lines written after the checkpoint, as for loss_log.jsonl
        write_text_atomic(val_log, "".join(json.dumps(r) + "\n" for r in lines))
    if not lines:
        return None
    losses = [r.get("objective", r["loss"]) for r in lines]
    i = int(np.argmin(losses))
    return losses[i], len(losses) - 1 - i
