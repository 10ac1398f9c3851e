"""Stage 1 (decoupled training): train only the E-Adapter with the diffusion loss on triplets.

Frozen parts (VAE, text encoders, image encoder, recognizer) run once, in :func:`prepare_cache`; the loop then
touches only the UNet (frozen) and the adapter. Randomness is a pure function of (seed, step, process), and the
data order of (seed, epoch), so a run resumed from a checkpoint repeats the uninterrupted run's losses exactly.
Checkpoints hold safetensors only (adapter folder + optimizer tensors) and a JSON file; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from ..adapted_unet import AdaptedUNet
from ..adapter import EmojiDiffAdapter
from .atomic import atomic_path, write_text_atomic
from .face_losses import FaceLossConfig, face_losses
from .triplets import Triplet, open_rgb

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- cache
def _file_stamp(path: str | os.PathLike, what: str) -> str:
    """``path|size|mtime_ns`` of a file the cache depends on (replacing it in place changes the stamp)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise FileNotFoundError(f"{what} {str(path)!r} cannot be read: {err.strerror}.") from err
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def _model_identity(model, what: str) -> str:
    """What identifies a frozen model: its model file's stamp when it has one (insightface models), else its repr
    without memory addresses (stable across processes)."""
    model_file = getattr(model, "model_file", None)
    if model_file:
        return f"{type(model).__name__}({_file_stamp(model_file, what)})"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model))


def _config_json(component) -> str:
    config = getattr(component, "config", None)
    config = component.to_dict() if config is None and hasattr(component, "to_dict") else config
    if config is None:
        return "None" if component is None else type(component).__name__
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(config, sort_keys=True, default=str)


def cache_dependencies(pipe, face_analyzer, with_image_tokens: bool = True) -> str:
    """Everything besides the triplets that the cached values depend on: the face front-end (recognizer and detector
    identities, its settings) and, with image tokens, the image encoder and feature extractor configs."""
    parts = [
        f"recognizer={_model_identity(getattr(face_analyzer, 'recognizer', None), 'the recognizer model file')}",
        f"detector={_model_identity(getattr(face_analyzer, 'detector', None), 'the detector model file')}",
        f"face={_model_identity(face_analyzer, 'the face front-end model file')}",
    ]
    if with_image_tokens:
        parts.append(f"image_encoder={_config_json(getattr(pipe, 'image_encoder', None))}")
        parts.append(f"feature_extractor={_config_json(getattr(pipe, 'feature_extractor', None))}")
    return "|".join(parts)


def _cache_key(triplets: list[Triplet], resolution: int, extra: str) -> str:
    """Hash of the resolution, `extra` (pipeline and model identities) and the triplets, including the size and
    mtime of every image they reference."""
    h = hashlib.sha256(f"{resolution}|{extra}".encode())
    stamps: dict[str, str] = {}
    for n, t in enumerate(triplets):
        h.update(json.dumps(t.to_json(), sort_keys=True).encode())
        for path in (t.template, *t.references, t.target):
            if path not in stamps:
                stamps[path] = _file_stamp(path, f"an image of triplet {n}")
            h.update(stamps[path].encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def prepare_cache(
    pipe,
    face_analyzer,
    triplets: list[Triplet],
    resolution: int,
    batch_size: int = 16,
    with_target_kps: bool = False,
    expression_encoder=None,
    with_image_tokens: bool = True,
    template_crop: str = "arcface",
) -> dict:
    """Encode everything frozen once.

    Returns tensors: ``latents`` (N, 4, h, w) scaled VAE means of the targets; ``identity`` (N, 1, 512) normed mean
    reference embedding; ``template_index`` (N,) into ``templates`` (T, P, E) image-encoder patch tokens of the
    masked, aligned templates; ``prompt_index`` (N,) into ``prompt_embeds`` (Q, 77, C) and ``pooled`` (Q, C2);
    ``add_time_ids`` (1, 6); with `with_target_kps`, ``target_kps`` (N, 5, 2) the targets' keypoints in pixels at
    `resolution` (for the face-weighted loss; see :func:`target_keypoints`); with an `expression_encoder`,
    ``template_codes`` (T, K) its codes of the templates (the code stream's input, from the full template image and
    its keypoints). `with_image_tokens=False` skips the image encoder (a code-stream-only adapter); `template_crop`
    is the crop geometry of the image stream (the adapter's ``config.template_crop``).
    """
    from ..face import masked_template

    device = pipe._execution_device
    vae = pipe.vae
    if with_image_tokens and (pipe.image_encoder is None or pipe.feature_extractor is None):
        raise ValueError("The pipeline has no `image_encoder`/`feature_extractor`; the image stream needs both.")

    def load(path, size=None):
        img = open_rgb(path, "training image")
        return img.resize((size, size), PIL.Image.BICUBIC) if size and img.size != (size, size) else img

    # targets -> latents
    latents = []
    for i in range(0, len(triplets), batch_size):
        imgs = [
            np.asarray(load(t.target, resolution), dtype=np.float32) / 127.5 - 1.0
            for t in triplets[i : i + batch_size]
        ]
        x = torch.as_tensor(np.stack(imgs)).permute(0, 3, 1, 2).to(device, vae.dtype)
        latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    latents = torch.cat(latents).float().cpu()

    # references -> one normed mean embedding per triplet (what the identity projection computes from several)
    identity = []
    for n, t in enumerate(triplets):
        embs = [
            face_analyzer.identity_embedding(
                load(p),
                input_name=f"references[{j}] of triplet {n}",
                kps=None if t.reference_kps is None else t.reference_kps[j],
            )
            for j, p in enumerate(t.references)
        ]
        identity.append(F.normalize(torch.as_tensor(np.mean(embs, axis=0)), dim=-1))
    identity = torch.stack(identity)[:, None].float()

    # unique templates -> masked aligned crops -> patch tokens
    template_keys = [(t.template, json.dumps(t.template_kps)) for t in triplets]
    unique_templates = list(dict.fromkeys(template_keys))
    template_pos = {k: i for i, k in enumerate(unique_templates)}
    tokens, codes = [], []
    for i in range(0, len(unique_templates), batch_size):
        chunk = [(load(path), path, json.loads(kps)) for path, kps in unique_templates[i : i + batch_size]]
        if with_image_tokens:
            crops = [
                masked_template(
                    *face_analyzer.expression_crop(img, input_name=f"template {path}", kps=kps, geometry=template_crop)
                )
                for img, path, kps in chunk
            ]
            tokens.append(pipe.encode_template_crops(crops, device).float().cpu())
        if expression_encoder is not None:
            codes.append(
                torch.as_tensor(
                    expression_encoder([np.asarray(img) for img, _, _ in chunk], [kps for _, _, kps in chunk]),
                    dtype=torch.float32,
                )
            )
    extra = {"templates": torch.cat(tokens)} if with_image_tokens else {}
    if expression_encoder is not None:
        extra["template_codes"] = torch.cat(codes)

    # unique prompts -> text embeddings
    prompts = list(dict.fromkeys(t.prompt for t in triplets))
    prompt_pos = {p: i for i, p in enumerate(prompts)}
    embeds, pooled = [], []
    for i in range(0, len(prompts), batch_size):
        pe, _, pp, _ = pipe.encode_prompt(
            prompts[i : i + batch_size], device=device, do_classifier_free_guidance=False
        )
        embeds.append(pe.float().cpu())
        pooled.append(pp.float().cpu())
    text_dim = pipe.text_encoder_2.config.projection_dim
    add_time_ids = pipe._get_add_time_ids(
        (resolution, resolution),
        (0, 0),
        (resolution, resolution),
        dtype=torch.float32,
        text_encoder_projection_dim=text_dim,
    )
    if with_target_kps:
        extra["target_kps"] = target_keypoints(face_analyzer, triplets, resolution)
    return {
        **extra,
        "latents": latents,
        "identity": identity,
        "template_index": torch.tensor([template_pos[k] for k in template_keys]),
        "prompt_embeds": torch.cat(embeds),
        "pooled": torch.cat(pooled),
        "prompt_index": torch.tensor([prompt_pos[t.prompt] for t in triplets]),
        "add_time_ids": add_time_ids,
    }


def target_keypoints(face_analyzer, triplets: list[Triplet], resolution: int) -> torch.Tensor:
    """(N, 5, 2) keypoints of each target in pixels at `resolution`: the triplet's ``target_kps``, else the template's
    when the target is the template (same-identity pairs), else detected by the face front-end."""
    out = []
    for n, t in enumerate(triplets):
        with PIL.Image.open(t.target) as img:
            width, height = img.size
            kps = t.target_kps
            if kps is None and t.target == t.template:
                kps = t.template_kps
            if kps is None:
                image = np.asarray(img.convert("RGB"))
                faces = face_analyzer.detect(image, f"target of triplet {n}")
                if not faces:
                    raise ValueError(
                        f"The face-weighted loss needs the target's keypoints: triplet {n} ({t.target}) has no "
                        "`target_kps` and the face front-end found no face in it. Add `target_kps` to the manifest, "
                        "pass a detector (`--face_pack` / `--detector`), or set `--face_loss_weight 0`."
                    )
                kps = face_analyzer.select(faces, f"target of triplet {n}").kps
        scale = torch.tensor([resolution / width, resolution / height])
        out.append(torch.as_tensor(np.asarray(kps, dtype=np.float32)) * scale)
    return torch.stack(out).float()


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


def load_or_prepare_cache(
    accelerator,
    pipe,
    face_analyzer,
    triplets,
    resolution,
    cache_dir: Path,
    with_target_kps: bool = False,
    expression_encoder=None,
    with_image_tokens: bool = True,
    template_crop: str = "arcface",
) -> dict:
    """The main process encodes and writes ``cache-<hash>.safetensors``; the others wait and read it. The hash covers
    the triplets and their images' size and mtime, the resolution, the pipeline's name, the image encoder, the face
    front-end (recognizer and detector) and the expression encoder, so a change to any of them re-encodes."""
    extra = (getattr(pipe, "name_or_path", "") or "") + ("|target_kps" if with_target_kps else "")
    extra += f"|codes={getattr(expression_encoder, 'name', None)}|image_tokens={with_image_tokens}"
    extra += "" if template_crop == "arcface" else f"|crop={template_crop}"
    extra += "|" + cache_dependencies(pipe, face_analyzer, with_image_tokens)
    key = _cache_key(triplets, resolution, extra)
    path = cache_dir / f"cache-{key}.safetensors"
    if accelerator.is_main_process and not path.exists():
        logger.info("Encoding %d triplets once (VAE, recognizer, image encoder, text encoders)...", len(triplets))
        cache = prepare_cache(
            pipe,
            face_analyzer,
            triplets,
            resolution,
            with_target_kps=with_target_kps,
            expression_encoder=expression_encoder,
            with_image_tokens=with_image_tokens,
            template_crop=template_crop,
        )
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in cache.items()}, str(tmp))
    accelerator.wait_for_everyone()
    return load_file(path)


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, adapter: EmojiDiffAdapter, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Write ``folder`` atomically: adapter/ (a loadable adapter folder), optimizer.safetensors, state.json."""
    state = optimizer.state_dict()
    tensors = {f"{idx}.{k}": v.detach().cpu().contiguous() for idx, s in state["state"].items() for k, v in s.items()}
    with atomic_path(folder) as tmp:
        adapter.save_pretrained(tmp / "adapter")
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "param_groups": state["param_groups"]}))


CHECKPOINT_FILES = (
    "state.json",
    "optimizer.safetensors",
    "adapter/config.json",
    "adapter/diffusion_pytorch_model.safetensors",
)


def _missing_checkpoint_files(folder: Path) -> list[str]:
    return [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]


def _read_safetensors(path: Path, folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as err:  # SafetensorError, OSError: truncated or not safetensors
        raise OSError(f"Checkpoint {folder}: {path} cannot be read ({err}); it is corrupt or truncated.") from err


def load_checkpoint(folder: Path, adapter: EmojiDiffAdapter, optimizer: torch.optim.Optimizer) -> int:
    """Restore adapter weights and optimizer state from `folder`; returns the step it was saved at.

    Raises ``FileNotFoundError`` / ``OSError`` / ``ValueError`` naming the file that is missing, unreadable, or
    does not fit `adapter` (another adapter configuration) or `optimizer`; nothing is restored then."""
    from ..adapter import check_tensor_shapes

    folder = Path(folder)
    missing = _missing_checkpoint_files(folder)
    if missing:
        raise FileNotFoundError(f"Checkpoint {folder} is incomplete: it has no {folder / missing[0]}.")
    weights_path = folder / "adapter" / "diffusion_pytorch_model.safetensors"
    weights = _read_safetensors(weights_path, folder)
    check_tensor_shapes(
        {k: tuple(v.shape) for k, v in adapter.state_dict().items()},
        {k: tuple(v.shape) for k, v in weights.items()},
        f"Checkpoint {folder}",
        weights_path,
        "this run's adapter",
    )
    state_path, optimizer_path = folder / "state.json", folder / "optimizer.safetensors"
    try:
        meta = json.loads(state_path.read_text())
        step, param_groups = int(meta["step"]), meta["param_groups"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Checkpoint {folder}: {state_path} is not a valid state file ({err!r}); it is corrupt or truncated."
        ) from err
    tensors = _read_safetensors(optimizer_path, folder)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    try:
        for name, value in tensors.items():
            idx, key = name.split(".", 1)
            if value.ndim and tuple(value.shape) != tuple(params[int(idx)].shape):
                raise ValueError(
                    f"{name!r} has shape {tuple(value.shape)}, its parameter {tuple(params[int(idx)].shape)}"
                )
            state.setdefault(int(idx), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(
            f"Checkpoint {folder}: {optimizer_path} and {state_path} do not fit this run's optimizer "
            f"({err}); the checkpoint belongs to another adapter configuration."
        ) from err
    adapter.load_state_dict(weights)
    return step


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    """checkpoint-<step> folders of `output_dir`, by step."""
    found = [
        p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(output_dir: Path, which: str) -> Path:
    """The checkpoint folder `which` names, or with ``"latest"`` the newest complete one in `output_dir` (incomplete
    folders, lacking one of :data:`CHECKPOINT_FILES`, are skipped with a warning)."""
    if which != "latest":
        path = Path(which)
        missing = _missing_checkpoint_files(path)
        if missing:
            raise FileNotFoundError(
                f"`resume_from_checkpoint`={which!r} is not a complete checkpoint folder: it has no {missing[0]}."
            )
        return path
    found = _checkpoint_folders(output_dir)
    if not found:
        raise FileNotFoundError(f"`resume_from_checkpoint`='latest' but {output_dir} holds no checkpoint-* folder.")
    for folder in reversed(found):
        missing = _missing_checkpoint_files(folder)
        if not missing:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (it has no %s).", folder, ", ".join(missing))
    raise FileNotFoundError(
        f"`resume_from_checkpoint`='latest' but every checkpoint-* folder in {output_dir} is incomplete "
        f"({', '.join(p.name for p in found)}; each needs {', '.join(CHECKPOINT_FILES)})."
    )


# what a training run writes into its output folder (besides checkpoint-<step>/); cache/ and the inputs are not
RUN_ARTEFACTS = ("loss_log.jsonl", "val_log.jsonl", "run_info.json", "adapter", "best_adapter")


def prepare_run_folder(output_dir: Path, resume: bool, overwrite: bool, is_main_process: bool = True) -> None:
    """Refuse a fresh run (not `resume`) into a folder that holds another run's artefacts, which it would replace
    and mix with its own; with `overwrite`, the main process deletes them first (checkpoints, logs, adapters)."""
    output_dir = Path(output_dir)
    if resume or not output_dir.is_dir():
        return
    names = RUN_ARTEFACTS + tuple(f"{a}.{suffix}" for a in ("adapter", "best_adapter") for suffix in ("tmp", "old"))
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir()] + [output_dir / n for n in names]
    found = [p for p in found if p.exists()]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"`output_dir` {output_dir} already holds a training run ({', '.join(sorted(p.name for p in found))}). A "
            "fresh run would replace its log and adapter and mix its checkpoints with the new ones. Resume it with "
            "`--resume_from_checkpoint latest`, choose another `--output_dir`, or pass `--overwrite_output_dir` to "
            "delete the old run first."
        )
    if is_main_process:
        logger.warning(
            "`overwrite_output_dir`: deleting the previous run in %s (%s).",
            output_dir,
            ", ".join(sorted(p.name for p in found)),
        )
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


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


def validation_rows(n: int, num_validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows) of the cache's `n` triplets: a seeded split, the same on every process."""
    if not 0 <= num_validation < n:
        raise ValueError(f"`num_validation` must be in [0, {n}) for {n} triplets, got {num_validation}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 1))
    return perm[num_validation:].sort().values, perm[:num_validation].sort().values


def adapted_prediction(
    adapted: AdaptedUNet,
    cache: dict,
    rows: torch.Tensor,
    noisy,
    timesteps,
    text,
    pooled,
    keep_id,
    keep_exp,
    device,
    template_rows=None,
    model=None,
) -> torch.Tensor:
    """The UNet's prediction (B, 4, h, w) for cached triplets `rows` (B,) with the adapter's conditioning.

    `template_rows` (B,) takes the templates of other rows (the template-swap probe); default `rows`. `model`: the
    adapter as wrapped for training (default ``adapted.adapter``)."""
    adapter = adapted.adapter
    tpl = cache["template_index"][rows if template_rows is None else template_rows]
    conditioning = adapted.conditioning(
        identity_embeds=cache["identity"][rows].to(device),
        expression_image_embeds=cache["templates"][tpl].to(device) if adapter.uses_image_stream else None,
        expression_codes=cache["template_codes"][tpl].to(device) if adapter.uses_code_stream else None,
        identity_keep=keep_id.to(device),
        expression_keep=keep_exp.to(device),
        model=model,
    )
    return adapted(
        noisy.to(device),
        timesteps.to(device),
        text.to(device),
        pooled.to(device),
        cache["add_time_ids"].to(device),
        conditioning,
    )


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

    `face` (``{"vae", "config", "expression_model", "identity_model"}``) adds the face losses of the right-template
    prediction (``face_expression`` / ``face_identity``, means over the rows with ``t <= max_timestep``) and
    ``objective``: ``loss`` plus their weighted sum, what the best adapter is chosen on.
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


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def _batch_indices(n: int, step: int, global_batch: int, seed: int) -> torch.Tensor:
    """Rows of the global batch at `step`: epoch-wise permutations seeded by (seed, epoch), read as a stream."""
    start = step * global_batch
    rows = []
    for pos in range(start, start + global_batch):
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        rows.append(perm[offset])
    return torch.stack(rows)


def training_noise_scheduler(sampler) -> DDPMScheduler:
    """The DDPM forward process with the pipeline scheduler's betas and prediction type, whatever sampler the pipeline
    ships with (diffusers' SDXL training scripts do the same): an Euler sampler's ``add_noise`` gives the unscaled
    ``x0 + sigma * noise`` and its ``get_velocity`` refuses integer timesteps."""
    return DDPMScheduler.from_config(sampler.config)


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the UNet regresses at integer `timesteps` [B]: the noise, or v = sqrt(a) * noise - sqrt(1 - a) * x0."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Unsupported `prediction_type` {scheduler.config.prediction_type!r} (epsilon or v_prediction).")


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
    unet.requires_grad_(False)
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
        start_step = load_checkpoint(folder, adapter, optimizer)
        logger.info("Resumed from %s at step %d.", folder, start_step)
        if accelerator.is_main_process and log_path.exists():  # drop log lines written after that checkpoint
            kept = [r for r in _read_log(log_path) if r["step"] < start_step]
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept))
            elapsed_before = kept[-1].get("elapsed_s", 0.0) if kept else 0.0
        accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(adapter, optimizer)
    unet.to(accelerator.device)

    train_rows, val_rows = validation_rows(cache["latents"].shape[0], config.num_validation, config.seed)
    n = len(train_rows)
    val_log = output_dir / "val_log.jsonl"
    resumed = _best_validation(val_log, start_step, accelerator.is_main_process) if start_step else None
    best_loss, stale = (None, 0) if resumed is None else resumed
    if not start_step and accelerator.is_main_process and val_log.exists():
        val_log.unlink()
    per_process = config.batch_size
    global_batch = per_process * accelerator.num_processes
    if accelerator.is_main_process:
        info = {
            "num_processes": accelerator.num_processes,
            "global_batch": global_batch,
            "num_triplets": n,
            "start_step": start_step,
            "config": dataclasses.asdict(config),
        }
        write_text_atomic(output_dir / "run_info.json", json.dumps(info, indent=1))
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
        g = _step_generator(config.seed, step)
        mine = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
        rows = train_rows[_batch_indices(n, step, global_batch, config.seed)[mine]]
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

        device = accelerator.device
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = adapted_prediction(
            adapted, cache, rows, noisy, timesteps, text, pooled, keep_id, keep_exp, device, model=model
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
                with torch.no_grad():
                    pred_off = adapted_prediction(
                        adapted,
                        cache,
                        rows,
                        noisy,
                        timesteps,
                        text,
                        pooled,
                        keep_id,
                        torch.zeros_like(keep_exp),
                        device,
                        model=model,
                    )
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
            )
            record = {f"face_{k}": v.item() for k, v in parts.items() if k != "total"}
            record["diffusion_loss"] = loss.item()
            loss = loss + parts["total"]
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
        if config.num_validation and (done % config.validation_steps == 0 or done == config.max_steps):
            # every process computes the same numbers, so all take the same early-stopping decision
            val = validation_losses(
                adapted, scheduler, cache, val_rows, device, config.seed, per_process, face, model=model
            )
            score = val.get("objective", val["loss"])
            improved = best_loss is None or score < best_loss
            best_loss, stale = (score, 0) if improved else (best_loss, stale + 1)
            stop = bool(config.early_stopping_patience) and stale >= config.early_stopping_patience
            if accelerator.is_main_process:
                if improved:  # the best adapter so far, written atomically
                    _save_adapter(accelerator.unwrap_model(model), output_dir / "best_adapter")
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
                save_checkpoint(output_dir / f"checkpoint-{done}", accelerator.unwrap_model(model), optimizer, done)
                _prune(output_dir, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        if stop:
            logger.info("Early stop at step %d: no better validation loss in %d validations.", done, stale)
            break
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        if config.num_validation and (output_dir / "best_adapter").is_dir():  # the held-out best, not the last
            final = EmojiDiffAdapter.from_pretrained(output_dir / "best_adapter")
        _save_adapter(final, output_dir / "adapter")
    accelerator.wait_for_everyone()
    return losses


def _face_losses_on(config: Stage1Config) -> bool:
    return config.face_losses is not None and config.face_losses.enabled


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


def _save_adapter(adapter: EmojiDiffAdapter, folder: Path) -> None:
    """save_pretrained into a temporary folder, then rename into place: a finished folder is never half written."""
    with atomic_path(folder) as tmp:
        adapter.save_pretrained(tmp)


def _best_validation(val_log: Path, start_step: int, rewrite: bool) -> tuple[float, int] | None:
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


def _prune(output_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    found = sorted(output_dir.glob("checkpoint-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    for old in found[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


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


def prepare_stage1_cache(
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
) -> dict:
    """Check the run folder and the expression encoder, then load (or encode once) the cache the loop trains on."""
    if adapter.uses_code_stream:
        from ..expression import check_adapter_encoder

        if expression_encoder is None:
            raise ValueError(
                f"The adapter has a code stream: pass its `expression_encoder` "
                f"({adapter.config.expression_encoder!r})."
            )
        check_adapter_encoder(adapter.config, expression_encoder)
    # refuse before the cache is written into a used folder
    prepare_run_folder(
        output_dir, bool(resume_from_checkpoint), config.overwrite_output_dir, accelerator.is_main_process
    )
    cache = load_or_prepare_cache(
        accelerator,
        pipe,
        face_analyzer,
        triplets,
        resolution,
        Path(output_dir) / "cache",
        with_target_kps=config.face_loss_weight > 0 or _face_losses_on(config),
        expression_encoder=expression_encoder if adapter.uses_code_stream else None,
        with_image_tokens=adapter.uses_image_stream,
        template_crop=adapter.config.template_crop,
    )
    return cache
