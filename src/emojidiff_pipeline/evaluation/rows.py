"""Evaluation rows: a row spec (``base``, an adapter folder, ``@id_only``, ``@exp=<scale>``, ``@eg=<scale>``) on a
pipeline, and its generated images for a list of cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _option_scale(spec: str, option: str, prefix: str) -> float:
    """The finite scale >= 0 of a row spec's ``@<prefix><scale>`` option; errors name the spec."""
    try:
        scale = float(option[len(prefix) :])
    except ValueError:
        raise ValueError(f"--row spec {spec!r}: '@{prefix}' needs a number, got {option[len(prefix) :]!r}.") from None
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"--row spec {spec!r}: '@{prefix}' needs a finite scale >= 0, got {scale}.")
    return scale


def split_expression_guidance(spec: str) -> tuple[str, float | None]:
    """``<spec>@eg=<scale>`` -> (spec, expression guidance scale); other specs -> (spec, None). See
    emojidiff_pipeline.guidance: the expression branch gets its own classifier-free guidance scale."""
    rest, _, option = spec.rpartition("@")
    if not (rest and option.startswith("eg=")):
        return spec, None
    scale = _option_scale(spec, option, "eg=")
    if rest == "base" or rest.endswith("@id_only"):
        raise ValueError(f"--row spec {spec!r}: '@eg=' guides the expression branch; this row has none.")
    return rest, scale


def parse_row_spec(spec: str) -> tuple[str, float]:
    """``base`` | ``<adapter>`` | ``<adapter>@id_only`` | ``<adapter>@exp=<scale>``, each optionally followed by
    ``@eg=<expression guidance scale>`` -> (folder, expression scale)."""
    spec, _ = split_expression_guidance(spec)
    folder, _, option = spec.rpartition("@")
    if option == "id_only":
        return folder, 0.0
    if folder and option.startswith("exp="):
        return folder, _option_scale(spec, option, "exp=")
    return spec, 1.0


def attach_row(pipe, folder: str, face, expression_encoder=None) -> None:
    """Put a row's adapter (or none, for ``base``) on `pipe`, with the face analyzer and, for a code stream, the
    expression encoder (a callable returning one, so it loads only when needed)."""
    from ..adapter import EmojiDiffAdapter

    if folder == "base":
        if pipe.emoji_adapter is not None:
            pipe.unload_emoji_adapter()
    else:  # the pipeline may sit on a GPU in fp16 (ModelMixin.to would warn on any dtype)
        adapter = EmojiDiffAdapter.from_pretrained(folder)
        pipe.set_emoji_adapter(torch.nn.Module.to(adapter, device=pipe.unet.device, dtype=pipe.unet.dtype))
        if adapter.uses_code_stream:
            if expression_encoder is None:
                raise ValueError(
                    f"--row {folder}: the adapter has a code stream (encoder "
                    f"{adapter.config.expression_encoder!r}); pass --expression_encoder."
                )
            pipe.set_expression_encoder(expression_encoder())
    pipe.set_face_analyzer(face)


@dataclass(frozen=True)
class GenerationSettings:
    """How a row's images are sampled: prompts per pipeline call, the seed (image k of the evaluation uses the
    generator ``seed * 100_000 + k``), denoising steps and the text guidance scale."""

    batch_size: int = 8
    seed: int = 0
    steps: int = 30
    guidance_scale: float = 5.0


def generate_row(
    pipe,
    spec: str,
    cases,
    face,
    settings: GenerationSettings,
    resolution: int | None = None,
    expression_encoder=None,
    expression_scale=None,
    progress=None,
) -> list[np.ndarray]:
    """One generated uint8 image per case for a row spec (at `resolution`, default the pipeline's default);
    `expression_scale` (a number or per-block dict) replaces the spec's ``@exp=`` scale; `progress` (a tqdm bar)
    advances by one per image."""
    folder, spec_scale = parse_row_spec(spec)
    _, expression_guidance = split_expression_guidance(spec)
    expression_scale = spec_scale if expression_scale is None else expression_scale
    attach_row(pipe, folder, face, expression_encoder)
    size = {} if resolution is None else {"height": resolution, "width": resolution}
    images = []
    for start in range(0, len(cases), settings.batch_size):
        chunk = cases[start : start + settings.batch_size]
        kwargs = dict(size)
        if folder != "base":
            kwargs.update(
                identity_image=[[c.reference] for c in chunk],
                expression_image=[c.template for c in chunk],
                expression_scale=expression_scale,
                expression_guidance_scale=expression_guidance,
            )
        gens = [torch.Generator().manual_seed(settings.seed * 100_000 + start + k) for k in range(len(chunk))]
        out = pipe(
            [c.prompt for c in chunk],
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=gens,
            output_type="np",
            **kwargs,
        ).images
        images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
        if progress is not None:
            progress.update(len(chunk))
    return images


@torch.no_grad()
def vae_round_trip(vae, images: list[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """Each uint8 image (H, W, 3) encoded to the VAE's latent mean and decoded again: what a generator that drew
    exactly the image's latent would output, so its scores are the ceiling any adapter on this VAE can reach."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack(images[start : start + batch_size])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1.0
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
        out.extend(pixels.numpy())
    return out
