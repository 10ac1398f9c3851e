"""Stage 2: ID-enhanced Contrast Alignment (ICA) with Adaptive Noise Inversion (ANI), from a stage-1 adapter.

ICA is the stage-1 loop (:func:`~.stage1.train_stage1`) with timesteps drawn in a truncated range ``[0, t_ani]`` and
the face losses of :mod:`.face_losses` on the one-step x0, decoded by the VAE (METHOD.md, "Stage 2"):

    loss = diffusion + l_id * (1 - cos(F(x0_on), F(reference)))
                     + l_align * (1 - cos(F(x0_on), stopgrad F(x0_off)))
                     + l_exp * |E(x0_on) - E(target)|

x0_on / x0_off: the one-step predictions with the expression branch on / off from the same noise. F: a
differentiable face recognizer that is not the evaluation's (and, for the reference anchor, the network of the
recognizer that encoded the references). **ANI** sets ``t_ani`` from measured one-step reconstruction quality:
:func:`calibrate_max_timestep` takes the largest candidate t whose one-step x0 on a calibration batch still keeps the
target's identity (mean cos(F(x0), F(decoded target))) at or above a threshold. The bound is logged, written to
``<run>/ani.json`` and copied into the adapter folders the run writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapted_unet import AdaptedUNet
from .atomic import write_text_atomic
from .cache import adapted_prediction
from .diffusion import training_noise_scheduler
from .face_losses import DifferentiableFaceModel, decode_latents, one_step_x0
from .validation import validation_rows

logger = logging.getLogger(__name__)
ANI_FILE = "ani.json"


@dataclass
class AniConfig:
    """Adaptive Noise Inversion: candidates for the bound (ascending), the identity threshold, the batch.

    `fixed_max_timestep` replaces ANI by a hand-picked bound (the comparison rows): identity is still measured
    there, for the record, but the bound is kept whatever it scores."""

    threshold: float = 0.6
    candidates: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
    calibration_size: int = 64
    seed: int = 0
    fixed_max_timestep: int | None = None

    def __post_init__(self):
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"`threshold` is a cosine similarity in [-1, 1], got {self.threshold!r}.")
        cands = tuple(int(c) for c in self.candidates)
        if not cands or list(cands) != sorted(set(cands)) or cands[0] < 0:
            raise ValueError(f"`candidates` must be distinct ascending timesteps >= 0, got {self.candidates!r}.")
        self.candidates = cands
        if self.calibration_size < 1:
            raise ValueError(f"`calibration_size` must be >= 1, got {self.calibration_size}.")
        fixed = self.fixed_max_timestep
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 0):
            raise ValueError(f"`fixed_max_timestep` must be None or an int >= 0, got {fixed!r}.")


@torch.no_grad()
def calibrate_max_timestep(
    pipe,
    adapter,
    cache: dict,
    identity_model: DifferentiableFaceModel,
    config: AniConfig,
    num_validation: int = 0,
    batch_size: int = 16,
) -> dict:
    """ANI: the largest candidate timestep whose one-step x0 keeps the target's identity.

    For each candidate t, the calibration rows (a seeded draw from the training rows, i.e. not the held-out ones)
    are noised to t with fixed noise, the adapter's prediction (both branches on) gives x0, and the mean cosine
    between F(decoded x0) and F(decoded target) is measured. Returns ``{"max_timestep", "threshold",
    "identity_by_timestep": {t: cos}}``; ``max_timestep`` is the largest t at or above the threshold, else the
    smallest candidate (logged as a warning: even light noise loses identity, so the losses act only there).
    With ``config.fixed_max_timestep`` only that t is measured and it is the bound (``"fixed": true``).
    """
    scheduler = training_noise_scheduler(pipe.scheduler)
    device = pipe.unet.device
    adapted = AdaptedUNet(pipe.unet, adapter)
    train_rows, _ = validation_rows(cache["latents"].shape[0], num_validation, 0)
    g = torch.Generator().manual_seed(config.seed * 7_777 + 5)
    rows = train_rows[torch.randperm(len(train_rows), generator=g)[: config.calibration_size]].sort().values
    noise = torch.randn((len(rows), *cache["latents"].shape[1:]), generator=g)
    was_training = adapter.training
    adapter.eval()
    by_t = {}
    fixed = config.fixed_max_timestep
    for t_value in config.candidates if fixed is None else (fixed,):
        sims = []
        for start in range(0, len(rows), batch_size):
            r = rows[start : start + batch_size]
            latents = cache["latents"][r]
            t = torch.full((len(r),), t_value, dtype=torch.long)
            noisy = scheduler.add_noise(latents, noise[start : start + batch_size], t)
            text = cache["prompt_embeds"][cache["prompt_index"][r]]
            pooled = cache["pooled"][cache["prompt_index"][r]]
            ones = torch.ones(len(r), dtype=torch.bool)
            pred = adapted_prediction(adapted, cache, r, noisy, t, text, pooled, ones, ones, device)
            x0 = one_step_x0(scheduler, noisy.to(device), pred, t)
            kps = cache["target_kps"][r]
            got = F.normalize(identity_model(decode_latents(pipe.vae, x0), kps).float(), dim=-1)
            want = F.normalize(identity_model(decode_latents(pipe.vae, latents.to(device)), kps).float(), dim=-1)
            sims.append((got * want).sum(-1).cpu())
        by_t[t_value] = float(torch.cat(sims).mean())
    adapter.train(was_training)
    if fixed is not None:
        logger.info("Fixed max timestep %d (not ANI; identity there %.4f).", fixed, by_t[fixed])
        return {"max_timestep": fixed, "fixed": True, "identity_by_timestep": by_t}
    kept = [t for t in config.candidates if by_t[t] >= config.threshold]
    bound = max(kept) if kept else config.candidates[0]
    if not kept:
        logger.warning(
            "ANI: no candidate timestep keeps identity >= %.3f (%s); using the smallest, %d.",
            config.threshold,
            by_t,
            bound,
        )
    logger.info(
        "ANI: max timestep %d (identity by timestep %s, threshold %.3f)",
        bound,
        {t: round(v, 4) for t, v in by_t.items()},
        config.threshold,
    )
    return {"max_timestep": int(bound), "threshold": config.threshold, "identity_by_timestep": by_t}


def load_or_calibrate(output_dir: Path, calibrate, is_main_process: bool = True) -> dict:
    """The run's ANI result: ``<output_dir>/ani.json`` when present (resume repeats the same bound), else
    ``calibrate()``, written atomically."""
    path = Path(output_dir) / ANI_FILE
    if path.exists():
        ani = json.loads(path.read_text())
        logger.info("ANI: reusing %s (max timestep %d).", path, ani["max_timestep"])
        return ani
    ani = json.loads(json.dumps(calibrate()))  # as a resumed run reads it back (timestep keys become strings)
    if is_main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(ani, indent=1))
    return ani


def copy_ani_into_adapters(output_dir: Path) -> None:
    """Store the bound with every adapter folder of the run (adapter/, best_adapter/, checkpoint-*/adapter)."""
    source = Path(output_dir) / ANI_FILE
    for folder in [output_dir / "adapter", output_dir / "best_adapter", *output_dir.glob("checkpoint-*/adapter")]:
        if folder.is_dir():
            write_text_atomic(folder / ANI_FILE, source.read_text())


def run_ica(
    accelerator,
    pipe,
    adapter,
    triplets,
    face_analyzer,
    resolution: int,
    output_dir: Path,
    config,
    ani: AniConfig,
    resume_from_checkpoint: str | None = None,
    expression_encoder=None,
    expression_loss_model=None,
    identity_loss_model=None,
) -> tuple[list[float], dict]:
    """ICA from the stage-1 `adapter`: cache, ANI bound (calibrated once per run, reused on resume), then the
    stage-1 loop with timesteps and face losses limited to ``[0, bound]``. `config` is a
    :class:`~.stage1.Stage1Config` whose ``face_losses`` hold the ICA weights. Returns (losses, ANI result)."""
    import dataclasses

    from .cache import prepare_stage1_cache
    from .stage1 import train_stage1

    if config.face_losses is None or not config.face_losses.enabled:
        raise ValueError(
            "ICA needs face losses: set identity, alignment and/or expression weights in `config.face_losses`."
        )
    if identity_loss_model is None:
        raise ValueError("ICA needs an `identity_loss_model` (a DifferentiableFaceModel face recognizer) for ANI.")
    output_dir = Path(output_dir)
    cache = prepare_stage1_cache(
        accelerator,
        pipe,
        adapter,
        triplets,
        face_analyzer,
        resolution,
        output_dir,
        config,
        resume_from_checkpoint,
        expression_encoder,
    )
    if not resume_from_checkpoint and (output_dir / ANI_FILE).exists() and accelerator.is_main_process:
        (output_dir / ANI_FILE).unlink()  # a fresh run recalibrates (the folder check above passed)
    accelerator.wait_for_everyone()
    pipe.unet.to(accelerator.device)
    identity_loss_model.to(accelerator.device)
    # every process calibrates alike (fixed rows and noise); the main one writes
    result = load_or_calibrate(
        output_dir,
        lambda: calibrate_max_timestep(
            pipe, adapter, cache, identity_loss_model, ani, config.num_validation, config.batch_size
        ),
        accelerator.is_main_process,
    )
    accelerator.wait_for_everyone()
    if bool(result.get("fixed")) != (ani.fixed_max_timestep is not None) or (
        ani.fixed_max_timestep is not None and result["max_timestep"] != ani.fixed_max_timestep
    ):
        raise ValueError(
            f"{output_dir / ANI_FILE} holds {result!r}, but this run asks for fixed_max_timestep="
            f"{ani.fixed_max_timestep!r}; resume with the run's own bound or start a fresh run."
        )
    bound = int(result["max_timestep"])
    config = dataclasses.replace(
        config, max_train_timestep=bound, face_losses=dataclasses.replace(config.face_losses, max_timestep=bound)
    )
    losses = train_stage1(
        accelerator,
        pipe,
        adapter,
        cache,
        config,
        output_dir,
        resume_from_checkpoint,
        expression_loss_model,
        identity_loss_model,
    )
    if accelerator.is_main_process:
        copy_ani_into_adapters(output_dir)
    accelerator.wait_for_everyone()
    return losses, result
