"""The model card `save_pretrained` writes: diffusers' model-card utilities, filled from the pipeline itself."""

from __future__ import annotations

import os
import re
from collections import Counter

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# per pipeline class: (diffusers parent, extra call arguments of the usage snippet, the placeholders they need)
_TASKS = {
    "EmojiDiffPipeline": ("StableDiffusionXLPipeline", "", ""),
    "EmojiDiffImg2ImgPipeline": (
        "StableDiffusionXLImg2ImgPipeline",
        "image=init_image, strength=0.6, ",
        'init_image = PIL.Image.new("RGB", (SIZE, SIZE), "gray")  # your start image\n',
    ),
    "EmojiDiffInpaintPipeline": (
        "StableDiffusionXLInpaintPipeline",
        "image=init_image, mask_image=mask, ",
        'init_image = PIL.Image.new("RGB", (SIZE, SIZE), "gray")  # your image\n'
        'mask = PIL.Image.new("L", (SIZE, SIZE), 255)  # white = repaint\n',
    ),
    "EmojiDiffControlNetPipeline": (
        "StableDiffusionXLControlNetPipeline",
        "image=control_image, ",
        'control_image = PIL.Image.new("RGB", (SIZE, SIZE))  # e.g. a pose or edge map\n',
    ),
    "EmojiDiffStableDiffusionPipeline": ("StableDiffusionPipeline", "", ""),
}

_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ model_description }}\n"

_DESCRIPTION = """\
# {title}

An [EmojiDiff](https://arxiv.org/abs/2412.01254) pipeline (`{pipeline}`, a diffusers `{parent}` with an E-Adapter),
built with [emojidiff_pipeline](https://pypi.org/project/emojidiff_pipeline/): identity from a reference face,
expression copied from an RGB expression template.

- Base model: {base_model}
- Adapter: {adapter}

## Use

```python
{snippet}```

With real photos, let a face analyzer find the faces (the insightface model pack is installed by you; nothing is
downloaded): `pipe.set_face_analyzer(FaceAnalyzer("antelopev2", root="~/.insightface"))` (from
`emojidiff_pipeline.face`), then pass `identity_image=photo` instead of `identity_embeds`, and give
`expression_kps=` when the template's 5 landmarks are known.

## Adapter layers

- identity branch: {identity_layers}
- expression branch: {expression_layers}
- identity tokens: {num_identity_tokens}; expression streams: `{streams}`{stream_detail}; template crop: `{crop}`

## Training data

{training_data}

## Limitations

- Identity embeddings come from insightface (ArcFace) models: insightface's pretrained packs (buffalo_l, antelopev2)
  are licensed for non-commercial research only, and that licence applies to any use that computes embeddings with
  them. The expression template's crop uses the same detector.
- The expression intensity is the template's: there is no continuous expression control; the expression branch can
  leak the template person's identity or style at high `expression_scale`.
- The adapter was trained for this base model's UNet; another UNet with other layer names or sizes is refused.
"""


def _layer_summary(layers) -> str:
    """{processor name: size} -> "N layers: up_blocks.0 x6, ..." (counted per block)."""
    if not layers:
        return "none"
    blocks = Counter(
        ".".join(name.split(".")[:2]) if not name.startswith("mid_block") else "mid_block" for name in layers
    )
    return f"{len(layers)} layers (" + ", ".join(f"{block} x{n}" for block, n in sorted(blocks.items())) + ")"


def _base_model(pipe, base_model: str | None) -> str | None:
    candidate = base_model or getattr(pipe, "name_or_path", None) or pipe.unet.config.get("_name_or_path")
    if candidate and _HUB_ID.match(str(candidate)) and not os.path.exists(str(candidate)):
        return str(candidate)
    if base_model is not None:
        raise ValueError(f"`base_model` must be a Hub id `owner/name`, got {base_model!r}.")
    return None


def usage_snippet(pipe, repo_id: str, remote_code: bool = False) -> str:
    """A snippet that loads `repo_id` and generates one image with placeholder inputs (it runs as written); with
    `remote_code`, through diffusers' `trust_remote_code` (no emojidiff_pipeline install needed)."""
    name = type(pipe).__name__
    _, extra, setup = _TASKS.get(name, _TASKS["EmojiDiffPipeline"])
    size = pipe.vae_scale_factor * (getattr(pipe, "default_sample_size", None) or pipe.unet.config.sample_size)
    adapter = pipe.emoji_adapter
    if remote_code:
        load = [
            "from diffusers import DiffusionPipeline",
            "",
            f"pipe = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)  # this repo's code",
        ]
    else:
        load = [f"from emojidiff_pipeline import {name}", "", f"pipe = {name}.from_pretrained({repo_id!r})"]
    lines = [
        "import PIL.Image",
        "import torch",
        "",
        *load,
        f"SIZE = {size}",
        f"identity_embeds = torch.nn.functional.normalize(torch.randn(1, 1, {adapter.config.identity_embed_dim}), "
        "dim=-1)  # your face's normed ArcFace embedding",
    ]
    call = "identity_embeds=identity_embeds, "
    if adapter.uses_code_stream:
        lines.append(
            f"expression_codes = torch.zeros(1, {adapter.config.expression_code_dim})  # "
            f"{adapter.config.expression_encoder or 'the expression encoder'}'s code of your template"
        )
        call += "expression_codes=expression_codes, "
    elif pipe.image_encoder is not None:
        lines.append('template = PIL.Image.new("RGB", (224, 224), "gray")  # an aligned expression template')
        call += "expression_image=template, "
    snippet = "\n".join(lines) + "\n" + setup
    snippet += (
        f'image = pipe("a portrait photo", {extra}{call}num_inference_steps=30,\n'
        "             generator=torch.Generator().manual_seed(0)).images[0]\n"
        'image.save("emojidiff.png")\n'
    )
    return snippet


def emojidiff_model_card(
    pipe, repo_id: str, base_model: str | None = None, training_data: str | None = None, remote_code: bool = False
):
    """A `huggingface_hub.ModelCard` for an EmojiDiff pipeline: metadata (library `diffusers`, tags, base model,
    licence) through diffusers' `populate_model_card`, every section filled from the pipeline (diffusers' own
    training template would leave "TODO" sections). Always freshly written, so a push replaces a stale card."""
    from diffusers.utils.hub_utils import populate_model_card
    from huggingface_hub import ModelCard, ModelCardData

    if pipe.emoji_adapter is None:
        raise ValueError(
            "This pipeline has no `emoji_adapter`, so there is no EmojiDiff model card to write; load one "
            "with `pipe.load_emoji_adapter(...)` first."
        )
    if training_data is not None and not isinstance(training_data, str):
        raise ValueError(f"`training_data` must be a str, got {type(training_data).__name__}.")
    name = type(pipe).__name__
    parent = _TASKS.get(name, (type(pipe).__mro__[2].__name__,))[0]
    config = pipe.emoji_adapter.config
    base = _base_model(pipe, base_model)
    streams = config.expression_streams
    detail = ""
    if streams in ("image", "both"):
        detail += f", {config.num_expression_tokens} image-stream tokens"
        if getattr(config, "expression_code_head", False):
            detail += f" (kept predictive of `{config.expression_encoder}`'s code in training)"
    if streams in ("code", "both"):
        detail += f", {config.num_expression_code_tokens} code-stream tokens from `{config.expression_encoder}`"
    n_params = sum(p.numel() for p in pipe.emoji_adapter.parameters())
    description = _DESCRIPTION.format(
        title=f"{name}: {repo_id.rstrip('/').split('/')[-1]}",
        pipeline=name,
        parent=parent,
        base_model=f"[`{base}`](https://huggingface.co/{base})"
        if base
        else "not recorded (built from a local folder)",
        adapter=f"`EmojiDiffAdapter`, {n_params / 1e6:.1f} M parameters, "
        f"cross-attention dim {config.cross_attention_dim}",
        snippet=usage_snippet(pipe, repo_id, remote_code),
        identity_layers=_layer_summary(config.identity_layers),
        expression_layers=_layer_summary(config.expression_layers),
        num_identity_tokens=config.num_identity_tokens,
        streams=streams,
        stream_detail=detail,
        crop=config.template_crop,
        training_data=training_data
        or "Not recorded with this pipeline: ask the uploader, or see the training run's "
        "`args.json` and evaluation files.",
    )
    card_data = ModelCardData(license="other", library_name="diffusers", inference=False, base_model=base)
    card = ModelCard.from_template(card_data, template_str=_TEMPLATE, model_description=description)
    card = populate_model_card(
        card,
        tags=[
            "emojidiff",
            "face",
            "expression-control",
            "text-to-image",
            "stable-diffusion-xl" if "XL" in parent else "stable-diffusion",
        ],
    )
    return card
