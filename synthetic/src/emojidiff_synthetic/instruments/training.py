"""Training one instrument: its rendered data (cached), the training heads (CosFace, L1 + soft BCE, cross-entropy),
augmentation, and a loop that checkpoints by wall-clock and resumes."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emojidiff_pipeline.train.checkpoints import STATE_FILE, load_checkpoint, save_checkpoint

from ..renderer import EXPRESSION_FIELDS, HAIR_STYLES
from .files import side_seed_base
from .networks import STYLE_HEADS, ExpressionEstimator, IdentityEncoder, StyleClassifier
from .preprocess import normalise
from .recipes import DATA_SEEDS, INSTRUMENTS, RunConfig, setting
from .render_sets import IDENTITY_FACTOR_FIELDS, held_out_identity_ids, render_set

logger = logging.getLogger(__name__)


def load_or_render(cache: Path, make) -> tuple[dict[str, np.ndarray], float]:
    """Arrays cached in folder `cache` (one .npy per key), or `make()` then cached. Returns (arrays, seconds spent)."""
    done = cache / "done.json"
    if done.is_file():
        keys = json.loads(done.read_text())["keys"]
        logger.info("Loading cached renders from %s", cache)
        return {k: np.load(cache / f"{k}.npy") for k in keys}, float(json.loads(done.read_text())["seconds"])
    start = time.time()
    arrays = dict(make())
    seconds = time.time() - start
    cache.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(cache / f"{k}.npy", v)
    done.write_text(json.dumps({"keys": list(arrays), "seconds": seconds}))
    logger.info("Rendered %d images into %s in %.0f s", len(arrays["label"]), cache, seconds)
    return arrays, seconds


def side_data(config: RunConfig, side: str, identities: int) -> tuple[dict[str, np.ndarray], float]:
    base = side_seed_base(side)
    seeds = [base + k for k in range(identities)]
    tag = f"{side}_{identities}x{config.photos_per_identity}_j{config.keypoint_jitter:g}"
    return load_or_render(
        Path(config.work_dir) / "data" / tag,
        lambda: render_set(
            seeds, config.photos_per_identity, DATA_SEEDS[side], keypoint_jitter=config.keypoint_jitter
        ),
    )


def heldout_data(config: RunConfig) -> tuple[dict[str, np.ndarray], float]:
    ids = held_out_identity_ids(config.num_collection_identities)
    tag = f"heldout_{config.num_collection_identities}x{config.eval_photos_per_identity}"
    return load_or_render(
        Path(config.work_dir) / "data" / tag,
        lambda: render_set(ids, config.eval_photos_per_identity, DATA_SEEDS["heldout"]),
    )


class IdentityTrainer(nn.Module):
    """Encoder + CosFace classifier over the training identities + auxiliary identity-factor heads.

    CosFace (Wang et al. 2018): logits = s * (cos(theta_y) - m) for the true class, s * cos(theta_j) otherwise."""

    def __init__(self, encoder: IdentityEncoder, num_classes: int, scale: float, margin: float):
        super().__init__()
        self.model = encoder
        self.scale, self.margin = scale, margin
        dim = encoder.config["embedding_dim"]
        self.class_weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.factor_head = nn.Linear(dim, len(IDENTITY_FACTOR_FIELDS))
        self.hair_head = nn.Linear(dim, len(HAIR_STYLES))

    def loss(self, x: torch.Tensor, batch: dict[str, torch.Tensor], aux_weight: float) -> tuple[torch.Tensor, dict]:
        emb = self.model(x)  # (B, 512)
        cos = F.normalize(emb, dim=1) @ F.normalize(self.class_weight, dim=1).T  # (B, classes)
        onehot = F.one_hot(batch["label"], cos.shape[1]).to(cos.dtype)
        l_id = F.cross_entropy(self.scale * (cos - self.margin * onehot), batch["label"])
        l_fac = F.mse_loss(torch.sigmoid(self.factor_head(emb)), batch["identity_factors"])
        l_hair = F.cross_entropy(self.hair_head(emb), batch["hair_style"])
        loss = l_id + aux_weight * (10.0 * l_fac + 0.5 * l_hair)
        return loss, {"cosface": l_id.item(), "factors_mse": l_fac.item(), "hair_ce": l_hair.item()}


class ExpressionTrainer(nn.Module):
    def __init__(self, estimator: ExpressionEstimator, gaze_weight: float = 1.0):
        super().__init__()
        self.model = estimator
        self.gaze_weight = gaze_weight
        self.gaze_idx = (EXPRESSION_FIELDS.index("gaze_x"), EXPRESSION_FIELDS.index("gaze_y"))
        self.close_idx = (EXPRESSION_FIELDS.index("eye_close_left"), EXPRESSION_FIELDS.index("eye_close_right"))

    def loss(self, x, batch, aux_weight):
        logits = self.model.forward_logits(x)  # (B, 11)
        target = batch["expression"]
        err = (torch.sigmoid(logits) - target).abs()  # L1, the reported metric
        # + soft-target BCE on the logits: its gradient sigmoid(z) - y never vanishes, so factors that are 0 (or 0.5)
        # most of the time do not get stuck at a saturated median, which L1 on the sigmoid alone does.
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weight = torch.ones_like(target)
        if self.gaze_weight != 1.0:
            # gaze is rare (0.5 most of the time) and subtle: weight it up where an iris is visible, down where both
            # eyes are (nearly) closed and the label cannot be read from the image
            visible = target[:, list(self.close_idx)].min(1).values < 0.8  # (B,)
            w = torch.where(visible, self.gaze_weight, 0.3)
            weight[:, list(self.gaze_idx)] = w[:, None]
        loss = (weight * (err + bce)).sum() / weight.sum()
        return loss, {"mae": err.mean().item(), "bce": bce.mean().item()}


class StyleTrainer(nn.Module):
    def __init__(self, classifier: StyleClassifier):
        super().__init__()
        self.model = classifier

    def loss(self, x, batch, aux_weight):
        logits = self.model(x)
        losses = [F.cross_entropy(logits[h], batch["style"][:, i]) for i, h in enumerate(STYLE_HEADS)]
        return sum(losses), {h: v.item() for h, v in zip(STYLE_HEADS, losses)}


def build_trainer(name: str, config: RunConfig, num_classes: int) -> nn.Module:
    spec = INSTRUMENTS[name]
    torch.manual_seed(spec["seed"])
    if spec["kind"] == "identity":
        return IdentityTrainer(IdentityEncoder(**spec["model"]), num_classes, config.scale, config.margin)
    if spec["kind"] == "expression":
        return ExpressionTrainer(ExpressionEstimator(**spec["model"]), config.gaze_weight)
    return StyleTrainer(StyleClassifier(**spec["model"]))


def augment(x: torch.Tensor, gen: torch.Generator, blur: bool = True) -> torch.Tensor:
    """Mild degradations (what generated images add to clean renders): Gaussian blur on 30% of the batch (sigma in
    [0.4, 1.0] px of the input), Gaussian noise on 30% (std up to 0.05 in normalised units)."""
    b = x.shape[0]
    if blur:
        sigma = 0.4 + 0.6 * torch.rand((), generator=gen).item()
        t = torch.arange(-2, 3, dtype=x.dtype)
        k1 = torch.exp(-(t**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
        pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).to(x.dtype)
        x = pick * blurred + (1 - pick) * x
    pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).to(x.dtype)
    std = 0.05 * torch.rand(b, 1, 1, 1, generator=gen)
    return x + pick * std * torch.randn(x.shape, generator=gen)


def n_renders(data: dict[str, np.ndarray]) -> int:
    return int(len(data["label"]))


def batch_tensors(data: dict[str, np.ndarray], idx: np.ndarray, kind: str) -> tuple[torch.Tensor, dict]:
    images = data["images"] if kind == "style" else data["faces"]
    x = normalise(images[idx]).contiguous(memory_format=torch.channels_last)
    batch = {
        k: torch.from_numpy(data[k][idx]) for k in ("label", "expression", "style", "identity_factors", "hair_style")
    }
    return x, batch


def train(name: str, config: RunConfig, data: dict[str, np.ndarray]) -> tuple[nn.Module, dict]:
    """Train (or resume) one instrument; returns its model (eval mode) and training facts."""
    spec = INSTRUMENTS[name]
    kind = spec["kind"]
    steps = setting(config, name, "steps")
    hflip = setting(config, name, "hflip") if kind == "identity" else 0.0
    num_classes = int(data["label"].max()) + 1
    trainer = build_trainer(name, config, num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(trainer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    folder = Path(config.work_dir) / name
    signature = {
        "model": spec["model"],
        "seed": spec["seed"],
        "training_renders": n_renders(data),
        "classes": num_classes,
        "batch_size": config.batch_size,
    }
    if hflip > 0:
        signature["hflip"] = hflip
    if kind == "expression":
        signature["gaze_weight"] = config.gaze_weight
    checkpoint = folder / "checkpoint"  # the library's checkpoint format, rewritten in place
    meta = None
    if (checkpoint / STATE_FILE).is_file():
        meta = load_checkpoint(checkpoint, {"trainer": trainer}, opt).extra
    if meta and meta.get("signature") != signature:
        raise ValueError(
            f"The checkpoint in {folder} was made with {meta.get('signature')}, but this run uses {signature}; "
            "use another --work_dir (or delete that folder) to start afresh."
        )
    start_step, seconds = (meta["step"], meta["train_seconds"]) if meta else (0, 0.0)
    if meta:
        logger.info("[%s] resuming from step %d (%.0f s of training so far)", name, start_step, seconds)
    n = n_renders(data)
    trainer.train()
    last_save = time.time()
    t0 = time.time() - seconds
    step = start_step
    for step in range(start_step, steps):
        lr = config.learning_rate * min(1.0, (step + 1) / max(config.warmup_steps, 1))
        lr *= 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([spec["seed"], step])
        idx = np.sort(rng.choice(n, size=min(config.batch_size, n), replace=False))
        x, batch = batch_tensors(data, idx, kind)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = augment(x, gen, blur=kind != "style")
        if hflip > 0:
            # identities are mirror-symmetric (but for the side-part hair), so a mirrored crop is the same person
            flip = torch.rand(len(x), 1, 1, 1, generator=gen) < hflip
            x = torch.where(flip, x.flip(3), x)
        loss, parts = trainer.loss(x, batch, config.aux_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info(
                "[%s] step %d/%d lr %.2e loss %.4f %s",
                name,
                step + 1,
                steps,
                lr,
                loss.item(),
                " ".join(f"{k} {v:.4f}" for k, v in parts.items()),
            )
        if step == steps - 1 or time.time() - last_save >= 60.0 * config.checkpoint_minutes:
            state = {"step": step + 1, "train_seconds": time.time() - t0, "steps": steps, "signature": signature}
            save_checkpoint(checkpoint, {"trainer": trainer}, opt, step + 1, state)
            last_save = time.time()
    if meta and start_step >= steps:
        logger.info("[%s] already trained for %d steps; skipping to evaluation", name, start_step)
    facts = {
        "identity_hflip": hflip if kind == "identity" else None,
        "steps": steps,
        "resumed_from_step": start_step,
        "batch_size": config.batch_size,
        "train_seconds": round(time.time() - t0, 1),
    }
    model = trainer.model.to(memory_format=torch.contiguous_format).eval()
    return model, facts
