"""The stage-1 cache: every frozen input of the adapter's training (VAE latents of the targets, reference identity
embeddings, template tokens or expression codes, prompt embeddings, target keypoints) encoded once and stored as
``cache-<hash>.safetensors``; the hash covers everything the values depend on, so a change re-encodes.
:func:`adapted_prediction` runs cached rows through the adapted UNet."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from ..adapted_unet import AdaptedUNet
from .atomic import atomic_path
from .triplets import Triplet, open_rgb

logger = logging.getLogger(__name__)


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
    from ..face_geometry import masked_template

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
        photos = [load(p) for p in t.references]
        identity.append(
            torch.as_tensor(face_analyzer.reference_embedding(photos, f"references of triplet {n}", t.reference_kps))
        )
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
    the triplets and their images' size and mtime, the resolution, the pipeline's name and (a local folder) its
    files' digest, the image encoder, the face front-end (recognizer and detector) and the expression encoder, so a
    change to any of them (a base replaced in place included) re-encodes."""
    from ..evaluation.base_identity import folder_digest

    name = getattr(pipe, "name_or_path", "") or ""
    extra = f"{name}|base={folder_digest(name)}" + ("|target_kps" if with_target_kps else "")
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


def prepare_stage1_cache(
    accelerator,
    pipe,
    adapter,
    triplets,
    face_analyzer,
    resolution: int,
    output_dir: Path,
    config,
    resume_from_checkpoint: str | None = None,
    expression_encoder=None,
) -> dict:
    """Check the run folder and the expression encoder, then load (or encode once) the cache the loop of
    :func:`~.stage1.train_stage1` trains on (`config`: its :class:`~.stage1.Stage1Config`)."""
    if adapter.trains_on_expression_codes:
        from ..expression import check_adapter_encoder

        if expression_encoder is None:
            what = "a code stream" if adapter.uses_code_stream else "an expression code head"
            raise ValueError(
                f"The adapter has {what}: pass its `expression_encoder` ({adapter.config.expression_encoder!r})."
            )
        check_adapter_encoder(adapter.config, expression_encoder)
    # refuse before the cache is written into a used folder
    from .checkpoints import prepare_run_folder

    prepare_run_folder(
        output_dir, bool(resume_from_checkpoint), config.overwrite_output_dir, accelerator.is_main_process
    )
    cache = load_or_prepare_cache(
        accelerator,
        pipe,
        face_analyzer,
        triplets,
        resolution,
        Path(config.cache_dir) if config.cache_dir else Path(output_dir) / "cache",
        with_target_kps=config.face_loss_weight > 0 or (config.face_losses is not None and config.face_losses.enabled),
        expression_encoder=expression_encoder if adapter.trains_on_expression_codes else None,
        with_image_tokens=adapter.uses_image_stream,
        template_crop=adapter.config.template_crop,
    )
    return cache


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
    return_adapter_output: bool = False,
):
    """The UNet's prediction (B, 4, h, w) for cached triplets `rows` (B,) with the adapter's conditioning.

    `template_rows` (B,) takes the templates of other rows (the template-swap probe); default `rows`. `model`: the
    adapter as wrapped for training (default ``adapted.adapter``). With `return_adapter_output`: (prediction, the
    adapter's :class:`~..adapter.AdapterOutput`)."""
    adapter = adapted.adapter
    tpl = cache["template_index"][rows if template_rows is None else template_rows]
    conditioning = adapted.conditioning(
        identity_embeds=cache["identity"][rows].to(device),
        expression_image_embeds=cache["templates"][tpl].to(device) if adapter.uses_image_stream else None,
        expression_codes=cache["template_codes"][tpl].to(device) if adapter.uses_code_stream else None,
        identity_keep=keep_id.to(device),
        expression_keep=keep_exp.to(device),
        model=model,
        return_adapter_output=return_adapter_output,
    )
    conditioning, out = conditioning if return_adapter_output else (conditioning, None)
    pred = adapted(
        noisy.to(device),
        timesteps.to(device),
        text.to(device),
        pooled.to(device),
        cache["add_time_ids"].to(device),
        conditioning,
    )
    return (pred, out) if return_adapter_output else pred
