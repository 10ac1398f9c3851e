"""The training loop shared by the base model's stages: settings (:class:`StageConfig`), start or resume, checkpoints
and the loss log. Step RNG, batch order and the checkpoint format are the library's (:mod:`emojidiff_pipeline.train`),
so a resumed run repeats the uninterrupted one as the adapter's stages do."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emojidiff_pipeline.train.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

from .checkpoints import EMA

logger = logging.getLogger(__name__)


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
        keys = (
            "batch_size",
            "learning_rate",
            "lr_warmup_steps",
            "weight_decay",
            "seed",
            "ema_decay",
            "caption_dropout",
            "snr_gamma",
            "kl_weight",
            "grad_weight",
            "face_weight",
            "temperature",
        )
        return {k: getattr(self, k) for k in keys}


def make_optimizer(params: list[torch.nn.Parameter], cfg: StageConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))


def set_lr(optimizer: torch.optim.Optimizer, cfg: StageConfig, step: int) -> None:
    lr = cfg.learning_rate * min(1.0, (step + 1) / max(1, cfg.lr_warmup_steps))
    for group in optimizer.param_groups:
        group["lr"] = lr


def start_stage(
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
        logger.info("No checkpoint in %s: starting this stage at step 0 (from its initial weights).", stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        return 0
    checkpoint = load_checkpoint(found[-1], modules, optimizer, ("ema",) if ema is not None else ())
    step, extra = checkpoint.step, checkpoint.extra
    if ema is not None:
        ema.load_state_dict(checkpoint.tensors["ema"])
    saved = extra.get("resume_key")
    if saved is not None and saved != json.loads(json.dumps(cfg.resume_key())):
        logger.warning("Resuming %s with different settings %s (checkpoint: %s).", stage_dir, cfg.resume_key(), saved)
    if log_path.exists():  # drop log lines written after that checkpoint
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
        log_path.write_text("".join(ln + "\n" for ln in kept))
    logger.info("Resumed %s from %s at step %d.", stage_dir.name, found[-1].name, step)
    return step


def save_stage_checkpoint(
    stage_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizer,
    cfg: StageConfig,
    done: int,
    ema: EMA | None = None,
) -> None:
    """``checkpoint-<done>`` of a stage: the modules, the optimizer, the EMA (tensor group ``ema``) and the settings a
    resume must match."""
    save_checkpoint(
        stage_dir / f"checkpoint-{done}",
        modules,
        optimizer,
        done,
        {"resume_key": cfg.resume_key()},
        {"ema": ema.state_dict()} if ema is not None else None,
    )


def run_loop(
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
                prune_checkpoints(stage_dir, cfg.checkpoints_total_limit)
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


def write_run_info(stage_dir: Path, info: dict[str, Any]) -> None:
    path = stage_dir / "run_info.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(info)
    path.write_text(json.dumps(runs, indent=1))
