"""Stage 1 (decoupled training): train only the E-Adapter with the diffusion loss on triplets.

Frozen parts (VAE, text encoders, image encoder, recognizer) run once, in :func:`~.cache.prepare_cache`; the loop
then touches only the UNet (frozen) and the adapter. Randomness is a pure function of (seed, step, process), and the
data order of (seed, epoch) (:mod:`.diffusion`), so a run resumed from a checkpoint (:mod:`.checkpoints`: safetensors
and JSON, nothing pickled) repeats the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapted_unet import AdaptedUNet
from ..adapter import EmojiDiffAdapter
from .atomic import write_text_atomic
from .cache import adapted_prediction
from .checkpoints import (
    find_checkpoint,
    load_checkpoint,
    prepare_run_folder,
    prune_checkpoints,
    save_checkpoint,
    save_pretrained_atomic,
)
from .diffusion import BatchSampler, diffusion_target, face_loss_weights, step_generator, training_noise_scheduler
from .face_losses import FaceLossConfig, face_loss_rows, face_losses, target_face_readings
from .validation import best_validation, validation_losses, validation_rows

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class Stage1Config:
    max_steps: int
    batch_size: int  # per process
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    identity_drop: float = 0.05
    expression_drop: float = 0.05
    text_drop: float = 0.05
    seed: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    face_loss_weight: float = 0.0  # 0: the standard diffusion loss; > 0: extra weight around the target's keypoints
    overwrite_output_dir: bool = False  # a fresh run into a folder holding another run deletes it (else: refused)
    num_validation: int = 0  # triplets held out of training for the validation loss (0: none)
    validation_steps: int = 250  # validate every this many steps (and at the last step)
    early_stopping_patience: int = 0  # stop after this many validations without a new best loss (0: never)
    face_losses: FaceLossConfig | None = None  # expression / identity read back from the one-step x0 (None: off)
    max_train_timestep: int | None = None  # draw training timesteps in [0, this] (ICA's ANI bound; None: all)
    # recompute the frozen UNet's blocks and (face losses) the VAE decoder's in the backward pass instead of keeping
    # their activations: less memory (SDXL at 1024 px, docs/ica_memory.md) for about one more forward of each
    gradient_checkpointing: bool = False
    # an image stream with `expression_code_head`: the weight of its auxiliary loss (mean squared error of the head's
    # code against the expression encoder's code of the template, keeping the stream predictive of the expression),
    # and the first steps that train that loss alone (the UNet is not run: the stream learns the expression before
    # the diffusion loss can make it collapse)
    expression_code_loss_weight: float = 0.0
    expression_code_pretrain_steps: int = 0
    # the frozen inputs' cache (default <output_dir>/cache); its files are named by a hash of their contents' recipe,
    # so runs over the same triplets at the same settings can share one folder and encode once
    cache_dir: str | None = None


def _check_code_loss(adapter: EmojiDiffAdapter, cache: dict, config: Stage1Config, num_processes: int) -> None:
    """Refuse a code loss the adapter or cache cannot train."""
    weight, pretrain = config.expression_code_loss_weight, config.expression_code_pretrain_steps
    if weight < 0 or pretrain < 0:
        raise ValueError(
            "`expression_code_loss_weight` and `expression_code_pretrain_steps` must be >= 0, got "
            f"{weight} and {pretrain}."
        )
    if pretrain and not weight:
        raise ValueError(
            f"`expression_code_pretrain_steps`={pretrain} trains the code loss alone, but "
            "`expression_code_loss_weight` is 0."
        )
    if weight and not adapter.config.expression_code_head:
        raise ValueError(
            f"`expression_code_loss_weight`={weight} needs an adapter with `expression_code_head` (an image stream "
            f"with a head reading the code back); this one has streams {adapter.config.expression_streams!r} "
            "and no head."
        )
    if weight and "template_codes" not in cache:
        raise ValueError("The code loss needs the templates' expression codes: prepare the cache with the encoder.")
    if pretrain and num_processes > 1:
        raise ValueError(
            f"`expression_code_pretrain_steps` runs only the expression branch, which distributed training "
            f"({num_processes} processes) cannot all-reduce without the identity branch's gradients; pretrain on "
            "one process and resume from its checkpoint."
        )


def _templates(cache: dict, rows: torch.Tensor, device) -> torch.Tensor:
    """The cached image tokens (B, P, E) of the templates of triplet `rows` (B,)."""
    return cache["templates"][cache["template_index"][rows]].to(device)


def _code_loss(adapter_out, cache: dict, rows: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the code head's prediction (B, K) against the encoder's codes of the rows' templates."""
    pred = adapter_out.expression_code_prediction.float()
    return F.mse_loss(pred, cache["template_codes"][cache["template_index"][rows]].to(pred.device).float())


@torch.no_grad()
def _held_out_code_loss(model, cache: dict, rows: torch.Tensor, device, batch_size: int) -> float:
    """The code loss over held-out triplet `rows`, in batches (mean over rows)."""
    total = 0.0
    for start in range(0, len(rows), batch_size):
        r = rows[start : start + batch_size]
        total += _code_loss(model(expression_image_embeds=_templates(cache, r, device)), cache, r).item() * len(r)
    return total / max(1, len(rows))


def _read_log(path: Path) -> list[dict]:
    """Records of a JSONL log; a torn last line (a crash while appending) is dropped with a warning, any other
    unreadable line is an error naming file and line."""
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a `step`")
        except ValueError as err:
            if i == len(lines):
                logger.warning("%s:%d: dropping a torn last line (%s).", path, i, err)
                break
            raise ValueError(f"{path}:{i}: cannot read this log line ({err}): {line[:80]!r}") from err
        records.append(record)
    return records


def train_stage1(
    accelerator,
    pipe,
    adapter: EmojiDiffAdapter,
    cache: dict,
    config: Stage1Config,
    output_dir: Path,
    resume_from_checkpoint: str | None = None,
    expression_loss_model=None,
    identity_loss_model=None,
) -> list[float]:
    """Run the loop; returns this run's per-step losses (mean over processes). Writes loss_log.jsonl,
    checkpoint-<step>/ folders and the final adapter/ folder under `output_dir`.

    With ``config.face_losses`` the loss adds :func:`~.face_losses.face_losses` read by the frozen
    `expression_loss_model` / `identity_loss_model` (:class:`~.face_losses.DifferentiableFaceModel`)."""
    from tqdm.auto import tqdm

    unet, scheduler = pipe.unet, training_noise_scheduler(pipe.scheduler)
    resolution = int(cache["add_time_ids"][0, 0])
    if config.face_loss_weight > 0 and "target_kps" not in cache:
        raise ValueError("`face_loss_weight` > 0 needs a cache prepared with `with_target_kps=True`.")
    face = _face_loss_setup(
        pipe, config.face_losses, cache, expression_loss_model, identity_loss_model, accelerator.device
    )
    if adapter.uses_code_stream and "template_codes" not in cache:
        raise ValueError(
            "The adapter's expression branch has a code stream: prepare the cache with its "
            f"`expression_encoder` ({adapter.config.expression_encoder!r})."
        )
    if adapter.uses_image_stream and "templates" not in cache:
        raise ValueError("The adapter's expression branch has an image stream: prepare the cache with image tokens.")
    _check_code_loss(adapter, cache, config, accelerator.num_processes)
    code_weight = config.expression_code_loss_weight
    unet.requires_grad_(False)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if face is not None:
            pipe.vae.enable_gradient_checkpointing()
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.image_encoder):
        if module is not None:
            module.requires_grad_(False)
    adapted = AdaptedUNet(unet, adapter)

    adapter.train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    start_step = 0
    log_path = output_dir / "loss_log.jsonl"
    elapsed_before = 0.0  # training wall-clock of the run before this process (resume), logged per step
    prepare_run_folder(
        output_dir, bool(resume_from_checkpoint), config.overwrite_output_dir, accelerator.is_main_process
    )
    accelerator.wait_for_everyone()
    if resume_from_checkpoint:
        folder = find_checkpoint(output_dir, resume_from_checkpoint)
        start_step = load_checkpoint(folder, {"adapter": adapter}, optimizer).step
        logger.info("Resumed from %s at step %d.", folder, start_step)
        if accelerator.is_main_process and log_path.exists():  # drop log lines written after that checkpoint
            kept = [r for r in _read_log(log_path) if r["step"] < start_step]
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept))
            elapsed_before = kept[-1].get("elapsed_s", 0.0) if kept else 0.0
        accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(adapter, optimizer)
    unet.to(accelerator.device)
    if face is not None:
        _read_targets(face, cache, config.batch_size)

    train_rows, val_rows = validation_rows(cache["latents"].shape[0], config.num_validation, config.seed)
    n = len(train_rows)
    val_log = output_dir / "val_log.jsonl"
    resumed = best_validation(val_log, start_step, accelerator.is_main_process) if start_step else None
    best_loss, stale = (None, 0) if resumed is None else resumed
    if not start_step and accelerator.is_main_process and val_log.exists():
        val_log.unlink()
    per_process = config.batch_size
    global_batch = per_process * accelerator.num_processes
    sampler = BatchSampler(n, global_batch, config.seed)
    if accelerator.is_main_process:
        info = {
            "num_processes": accelerator.num_processes,
            "global_batch": global_batch,
            "num_triplets": n,
            "start_step": start_step,
            "config": dataclasses.asdict(config),
        }
        write_text_atomic(output_dir / "run_info.json", json.dumps(info, indent=1))
    device = accelerator.device

    def training_loss(rows, latents, noise, timesteps, text, pooled, keep_id, keep_exp):
        """The loss of one batch after the code loss's solo warm-up, and its log record: the (face-weighted)
        diffusion loss, plus the face losses on the one-step x0 (`face`), plus the image stream's code loss.
        `rows` (B,) index the cache; `latents`, `noise` (B, C, h, w); `timesteps` (B,); `text` (B, L, D) and
        `pooled` (B, P) after text dropout; `keep_id`, `keep_exp` (B,) bool branch-dropout masks."""
        noisy = scheduler.add_noise(latents, noise, timesteps)
        inputs = (text, pooled, keep_id)
        pred, adapter_out = adapted_prediction(
            adapted, cache, rows, noisy, timesteps, *inputs, keep_exp, device, model=model, return_adapter_output=True
        )
        target = diffusion_target(scheduler, latents, noise, timesteps).to(device).float()
        if config.face_loss_weight > 0:
            weights = face_loss_weights(
                cache["target_kps"][rows], latents.shape[-2:], resolution, config.face_loss_weight
            ).to(device)
            loss = (weights * (pred.float() - target) ** 2).mean() / weights.mean()
        else:
            loss = F.mse_loss(pred.float(), target)
        record = {}
        if face is not None:
            pred_off = None
            if face["config"].alignment_weight > 0:  # ICA: the same noise with the expression branch off
                read = face_loss_rows(timesteps, face["config"])  # only the rows the face losses read
                pred_off = torch.zeros_like(pred)
                with torch.no_grad():
                    off = [x[read] for x in (rows, noisy, timesteps, *inputs)]
                    no_exp = torch.zeros_like(keep_exp[read])
                    prediction = adapted_prediction(adapted, cache, *off, no_exp, device, model=model)
                    pred_off[read.to(device)] = prediction.to(pred_off.dtype)
            parts = face_losses(
                face["vae"],
                scheduler,
                noisy,
                pred,
                latents,
                timesteps,
                cache["target_kps"][rows],
                face["config"],
                face["expression_model"],
                face["identity_model"],
                prediction_off=pred_off,
                reference_embeds=cache["identity"][rows][:, 0],
                target_expression=_rows_of(face.get("target_expression"), rows),
                target_identity=_rows_of(face.get("target_identity"), rows),
            )
            record = {f"face_{k}": v.item() for k, v in parts.items() if k != "total"}
            record["diffusion_loss"] = loss.item()
            loss = loss + parts["total"]
        if code_weight > 0:  # the image stream kept predictive of the code
            code_loss = _code_loss(adapter_out, cache, rows)
            record.setdefault("diffusion_loss", loss.item())
            record["expression_code_loss"] = code_loss.item()
            loss = loss + code_weight * code_loss
        return loss, record

    null_text = torch.zeros_like(cache["prompt_embeds"][:1])
    null_pooled = torch.zeros_like(cache["pooled"][:1])
    losses = []
    progress = tqdm(
        range(start_step, config.max_steps),
        initial=start_step,
        total=config.max_steps,
        disable=not accelerator.is_local_main_process,
        desc="stage 1",
    )
    clock = time.monotonic()
    for step in progress:
        # randomness is drawn for the whole global batch and sliced, so N processes x B == 1 process x N*B
        g = step_generator(config.seed, step)
        mine = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
        rows = train_rows[sampler.rows(step)[mine]]
        latents = cache["latents"][rows]
        b = latents.shape[0]
        noise = torch.randn((global_batch, *latents.shape[1:]), generator=g)[mine]
        high = (
            scheduler.config.num_train_timesteps
            if config.max_train_timestep is None
            else config.max_train_timestep + 1
        )
        timesteps = torch.randint(0, high, (global_batch,), generator=g)[mine]
        keep_id = (torch.rand(global_batch, generator=g) >= config.identity_drop)[mine]
        keep_exp = (torch.rand(global_batch, generator=g) >= config.expression_drop)[mine]
        keep_text = (torch.rand(global_batch, generator=g) >= config.text_drop)[mine].view(b, 1, 1)
        text = torch.where(keep_text, cache["prompt_embeds"][cache["prompt_index"][rows]], null_text)
        pooled = torch.where(keep_text[:, 0], cache["pooled"][cache["prompt_index"][rows]], null_pooled)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * min(1.0, (step + 1) / max(1, config.lr_warmup_steps))

        pretraining = step < config.expression_code_pretrain_steps
        # mixed precision (``--mixed_precision``) covers the frozen UNet and VAE too, not only the prepared adapter
        with accelerator.autocast():
            if pretraining:  # the image stream's code loss alone, no UNet
                code_loss = _code_loss(model(expression_image_embeds=_templates(cache, rows, device)), cache, rows)
                loss, record = code_weight * code_loss, {"expression_code_loss": code_loss.item()}
            else:
                loss, record = training_loss(rows, latents, noise, timesteps, text, pooled, keep_id, keep_exp)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"Loss became {mean_loss} at step {step}; lower `learning_rate`.")
        losses.append(mean_loss)
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        done = step + 1
        stop = False
        validate = done % config.validation_steps == 0 or done == config.max_steps
        # not while the code loss trains alone: the diffusion loss cannot move then (the branch's gates are closed)
        if config.num_validation and validate and done > config.expression_code_pretrain_steps:
            # every process computes the same numbers, so all take the same early-stopping decision
            val = validation_losses(
                adapted, scheduler, cache, val_rows, device, config.seed, per_process, face, model=model
            )
            if code_weight:
                val["expression_code_loss"] = _held_out_code_loss(model, cache, val_rows, device, per_process)
            score = val.get("objective", val["loss"])
            improved = best_loss is None or score < best_loss
            best_loss, stale = (score, 0) if improved else (best_loss, stale + 1)
            stop = bool(config.early_stopping_patience) and stale >= config.early_stopping_patience
            if accelerator.is_main_process:
                if improved:  # the best adapter so far, written atomically
                    save_pretrained_atomic(accelerator.unwrap_model(model), output_dir / "best_adapter")
                with open(val_log, "a") as f:
                    f.write(json.dumps({"step": step, **val, "best": improved}) + "\n")
                logger.info(
                    "step %d validation %s%s",
                    done,
                    {k: round(v, 5) for k, v in val.items()},
                    " (best)" if improved else f" ({stale} without improvement)",
                )
        if accelerator.is_main_process:
            with open(log_path, "a") as f:
                elapsed = round(elapsed_before + time.monotonic() - clock, 2)
                f.write(json.dumps({"step": step, "loss": mean_loss, **record, "elapsed_s": elapsed}) + "\n")
            if done % config.checkpointing_steps == 0 or done == config.max_steps or stop:
                save_checkpoint(
                    output_dir / f"checkpoint-{done}", {"adapter": accelerator.unwrap_model(model)}, optimizer, done
                )
                prune_checkpoints(output_dir, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        if stop:
            logger.info("Early stop at step %d: no better validation loss in %d validations.", done, stale)
            break
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if config.num_validation and (output_dir / "best_adapter").is_dir():  # the held-out best, not the last
            final = EmojiDiffAdapter.from_pretrained(output_dir / "best_adapter")
        save_pretrained_atomic(final, output_dir / "adapter")
    accelerator.wait_for_everyone()
    return losses


def _face_losses_on(config: Stage1Config) -> bool:
    return config.face_losses is not None and config.face_losses.enabled


def _rows_of(values: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if values is None else values[rows]


def _face_loss_setup(
    pipe, config: FaceLossConfig | None, cache: dict, expression_model, identity_model, device
) -> dict | None:
    """What :func:`face_losses` needs, checked up front (None when the face losses are off)."""
    if config is None or not config.enabled:
        return None
    if "target_kps" not in cache:
        raise ValueError("The face losses need the targets' keypoints: prepare the cache with `with_target_kps=True`.")
    if pipe.vae is None:
        raise ValueError("The face losses decode the one-step prediction: the pipeline needs a `vae`.")
    if config.expression_weight > 0 and expression_model is None:
        raise ValueError("`expression_weight` > 0 needs an `expression_loss_model` (a DifferentiableFaceModel).")
    if config.needs_identity_model and identity_model is None:
        raise ValueError(
            "`identity_weight` / `alignment_weight` > 0 need an `identity_loss_model` (a DifferentiableFaceModel)."
        )
    pipe.vae.to(device)
    return {
        "vae": pipe.vae,
        "config": config,
        "expression_model": expression_model.to(device) if config.expression_weight > 0 else None,
        "identity_model": identity_model.to(device) if config.needs_identity_model else None,
    }


def _read_targets(face: dict, cache: dict, batch_size: int) -> None:
    """Adds the face models' readings of every decoded target to `face` (:func:`target_face_readings`): they depend
    on the row only, so the run reads them once, not at every step."""
    clock = time.monotonic()
    readings = target_face_readings(
        face["vae"],
        cache["latents"],
        cache["target_kps"],
        face["config"],
        face["expression_model"],
        face["identity_model"],
        batch_size=batch_size,
    )
    face.update(readings)  # "target_expression" (N, C) / "target_identity" (N, D) over the cache's rows
    if readings:
        logger.info(
            "Read %s of %d decoded targets (%.0f s).",
            " and ".join(k.removeprefix("target_") for k in readings),
            len(cache["latents"]),
            time.monotonic() - clock,
        )


def run_stage1(
    accelerator,
    pipe,
    adapter,
    triplets,
    face_analyzer,
    resolution: int,
    output_dir: Path,
    config: Stage1Config,
    resume_from_checkpoint: str | None = None,
    expression_encoder=None,
    expression_loss_model=None,
    identity_loss_model=None,
) -> list[float]:
    """Encode the frozen inputs once (cached), then train; see :func:`train_stage1`. An adapter with a code stream
    needs the `expression_encoder` it was built for."""
    from .cache import prepare_stage1_cache

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
    return train_stage1(
        accelerator,
        pipe,
        adapter,
        cache,
        config,
        Path(output_dir),
        resume_from_checkpoint,
        expression_loss_model,
        identity_loss_model,
    )
