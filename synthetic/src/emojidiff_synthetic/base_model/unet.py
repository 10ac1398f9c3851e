"""Stage 2 of the base model: the two text encoders and the UNet, trained jointly with the diffusion loss on cached
latents."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from emojidiff_pipeline.train.diffusion import BatchSampler, diffusion_target, min_snr_weights, step_generator

from .checkpoints import EMA
from .components import build_noise_scheduler, build_text_encoders, build_unet, count_parameters, warm_start_unet
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
from .samples import sample_grid
from .tokenizer import build_tokenizer, tokenize

logger = logging.getLogger(__name__)


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


def train_unet(
    data: CollectionData,
    latents: dict[str, torch.Tensor],
    vae_dir: Path,
    config: BaseModelConfig,
    cfg: StageConfig,
    stage_dir: Path,
    resume: bool = False,
    step_callback: Callable[[int], None] | None = None,
    init_from: Path | None = None,
) -> list[float]:
    """Train the two text encoders and the UNet jointly with the diffusion loss of `config.prediction_type` on cached
    latents (caption dropout to the zero prompt for classifier-free guidance, optional Min-SNR weighting and EMA);
    writes checkpoints and ``final/`` (tokenizer, text_encoder, text_encoder_2, unet; EMA weights when enabled).

    `init_from` (a folder with ``tokenizer``, ``text_encoder``, ``text_encoder_2`` and ``unet``: an exported base
    pipeline or a UNet stage's ``final/``) starts from trained weights instead of random ones; its UNet may be a
    sub-layout of `config`'s (see :func:`~.components.warm_start_unet`): the start then reproduces it exactly."""
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
    if init_from is not None:
        _load_initial_weights(Path(init_from), tokenizer, modules)
    for m in modules.values():
        m.train()
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = make_optimizer(params, cfg)
    ema = EMA(modules, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start = start_stage(stage_dir, modules, optimizer, cfg, resume, ema)
    tokenizer.save_pretrained(stage_dir / "tokenizer")
    noise_scheduler = build_noise_scheduler(config)

    captions = sorted(set(data.captions))
    position = {c: i for i, c in enumerate(captions)}
    caption_index = torch.tensor([position[c] for c in data.captions])
    ids = tokenize(tokenizer, captions)  # (U, L): both tokenizers are the same vocabulary
    sampler = BatchSampler(len(data), cfg.batch_size, cfg.seed)
    time_ids = add_time_ids(config.resolution, cfg.batch_size)
    write_run_info(
        stage_dir,
        {
            "start_step": start,
            "num_images": len(data),
            "num_captions": len(captions),
            "vocab_size": len(tokenizer),
            "config": dataclasses.asdict(cfg),
            "params": {k: count_parameters(m) for k, m in modules.items()},
            "threads": torch.get_num_threads(),
            "init_from": None if init_from is None else str(init_from),
        },
    )

    def step_fn(step: int) -> dict[str, float]:
        g = step_generator(cfg.seed, step)
        rows = sampler.rows(step)
        b = rows.shape[0]
        x0 = latents["mean"][rows] + latents["std"][rows] * torch.randn(latents["mean"][rows].shape, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=g)
        keep = torch.rand(b, generator=g) >= cfg.caption_dropout
        set_lr(optimizer, cfg, step)
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
        loss = (per_sample * min_snr_weights(noise_scheduler, timesteps, cfg.snr_gamma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        return {"loss": float(loss.detach()), "mse": float(per_sample.detach().mean())}

    def save_fn(done: int) -> None:
        save_stage_checkpoint(stage_dir, modules, optimizer, cfg, done, ema)

    def validate_fn(done: int) -> None:
        sample_grid(stage_dir / "samples" / f"step-{done:06d}.png", vae_dir, tokenizer, modules, ema, config)

    losses = run_loop("unet", stage_dir, cfg, start, step_fn, save_fn, validate_fn, step_callback)
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


def _load_initial_weights(folder: Path, tokenizer: CLIPTokenizer, modules: dict[str, torch.nn.Module]) -> None:
    """`modules` (text_encoder, text_encoder_2, unet) loaded from `folder`'s trained ones; the vocabulary must be
    the one `tokenizer` learnt from this collection's captions."""
    missing = [n for n in ("tokenizer", *modules) if not (folder / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"`init_from` {str(folder)!r} has no {', '.join(missing)} folder(s).")
    if CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"`init_from` {str(folder)!r} was trained with another vocabulary than this collection's captions give."
        )
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        modules[name].load_state_dict(cls.from_pretrained(folder / name, dtype=torch.float32).state_dict())
    source = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    new = warm_start_unet(modules["unet"], source)
    logger.info("UNet initialised from %s (%d new weights start as no-op blocks).", folder, len(new))
