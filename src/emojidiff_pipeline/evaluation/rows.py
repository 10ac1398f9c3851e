"""Evaluation rows: a row spec (``base``, an adapter folder, ``@id_only``, ``@exp=<scale>``, ``@id=<scale>``,
``@eg=<scale>``) on a pipeline, and its generated images for a list of cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_SCALE_OPTIONS = {"id=": "identity_scale", "exp=": "expression_scale", "eg=": "expression_guidance"}


@dataclass(frozen=True)
class RowSpec:
    """A parsed ``--row`` spec: ``base`` (no adapter) or an adapter folder, followed by any of ``@id_only``
    (expression scale 0), ``@exp=<scale>``, ``@id=<scale>`` (the branches' scales, default 1) and ``@eg=<scale>``
    (the expression branch's own classifier-free guidance, emojidiff_pipeline.guidance; default off), each at most
    once, in any order. A folder may itself contain ``@``: only recognised options are split off the end."""

    folder: str
    identity_scale: float = 1.0
    expression_scale: float = 1.0
    expression_guidance: float | None = None

    @property
    def is_base(self) -> bool:
        return self.folder == "base"

    @property
    def default_scales(self) -> bool:
        """True when the row runs the adapter as trained (both scales 1, no expression guidance)."""
        return self.identity_scale == 1.0 and self.expression_scale == 1.0 and self.expression_guidance is None

    @classmethod
    def parse(cls, spec: str) -> RowSpec:
        """Errors are ValueErrors naming the spec and the option."""
        values: dict = {}
        folder = spec
        while True:
            rest, at, option = folder.rpartition("@")
            prefixes = ["id_only"] if option == "id_only" else [k for k in _SCALE_OPTIONS if option.startswith(k)]
            prefix = prefixes[0] if prefixes else None
            if not (at and rest and prefix):
                break
            name = "expression_scale" if prefix == "id_only" else _SCALE_OPTIONS[prefix]
            if name in values:
                raise ValueError(f"--row spec {spec!r}: '@{prefix}' sets {name} a second time.")
            values[name] = 0.0 if prefix == "id_only" else _option_scale(spec, option, prefix)
            folder = rest
        if folder == "base" and values:
            raise ValueError(f"--row spec {spec!r}: 'base' has no adapter, so its options would be ignored.")
        if values.get("expression_scale") == 0.0 and "expression_guidance" in values:
            raise ValueError(f"--row spec {spec!r}: '@eg=' guides the expression branch; this row has it off.")
        return cls(folder, **values)


def _option_scale(spec: str, option: str, prefix: str) -> float:
    """The finite scale >= 0 of a row spec's ``@<prefix><scale>`` option; errors name the spec."""
    try:
        scale = float(option[len(prefix) :])
    except ValueError:
        raise ValueError(f"--row spec {spec!r}: '@{prefix}' needs a number, got {option[len(prefix) :]!r}.") from None
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"--row spec {spec!r}: '@{prefix}' needs a finite scale >= 0, got {scale}.")
    return scale


def parse_row_spec(spec: str) -> tuple[str, float]:
    """A row spec -> (adapter folder or ``base``, expression scale); see RowSpec for the whole spec."""
    row = RowSpec.parse(spec)
    return row.folder, row.expression_scale


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
    row = RowSpec.parse(spec)
    expression_scale = row.expression_scale if expression_scale is None else expression_scale
    attach_row(pipe, row.folder, face, expression_encoder)
    size = {} if resolution is None else {"height": resolution, "width": resolution}
    images = []
    for start in range(0, len(cases), settings.batch_size):
        chunk = cases[start : start + settings.batch_size]
        kwargs = dict(size)
        if not row.is_base:
            kwargs.update(
                identity_image=[[c.reference] for c in chunk],
                expression_image=[c.template for c in chunk],
                identity_scale=row.identity_scale,
                expression_scale=expression_scale,
                expression_guidance_scale=row.expression_guidance,
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
