"""Gradio app on any EmojiDiff pipeline: identity photos + an expression template + a prompt -> a portrait.

`build_app(pipe, ...)` is the page (the synthetic world's default with its clickable examples is
`emojidiff-synthetic app`); `main()` serves an EmojiDiff pipeline folder or Hub id with an insightface pack::

    emojidiff app --model <folder or Hub id> --face_root ~/.insightface   # or EMOJIDIFF_MODEL / INSIGHTFACE_ROOT

Importing this module needs neither gradio nor torch; building the page needs
``pip install "emojidiff_pipeline[app]"``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

GRADIO_INSTALL = 'pip install "emojidiff_pipeline[app]"'

# Element ids of the page, stable for browser tests and custom CSS.
ELEM_IDS = {
    "identity": "emojidiff-identity",
    "template": "emojidiff-template",
    "prompt": "emojidiff-prompt",
    "generate": "emojidiff-generate",
    "output": "emojidiff-output",
    "identity_examples": "emojidiff-identity-examples",
    "template_examples": "emojidiff-template-examples",
}


# Template and portrait fill their boxes whatever the image size (gradio shows small images at their own size).
APP_CSS = f"""
#{ELEM_IDS["template"]} img, #{ELEM_IDS["output"]} img {{ width: 100%; height: 100%; object-fit: contain; }}
"""


@lru_cache
def is_gradio_available() -> bool:
    return importlib.util.find_spec("gradio") is not None


def _import_gradio():
    if not is_gradio_available():
        raise ImportError(f"The EmojiDiff app needs gradio, which is not installed: `{GRADIO_INSTALL}`.")
    import gradio

    return gradio


@dataclass(frozen=True)
class AppDefaults:
    """Initial values of the page's controls."""

    prompt: str = "a portrait photo, soft light"
    identity_scale: float = 1.0
    expression_scale: float = 1.0
    steps: int = 30
    guidance_scale: float = 5.0
    seed: int = 0


def identity_photos(value: Any) -> list:
    """The photos of a gallery or multi-file input as a list of RGB PIL images (of one person).

    Accepts what gradio passes: a list of ``(image, caption)`` tuples, of images, or of file paths."""
    import numpy as np
    import PIL.Image

    if not value:
        return []
    photos = []
    for k, item in enumerate(value):
        item = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(item, (str, os.PathLike)):
            item = PIL.Image.open(item)
        elif isinstance(item, np.ndarray):
            item = PIL.Image.fromarray(item)
        elif not isinstance(item, PIL.Image.Image):
            raise ValueError(f"Identity photo {k} is not an image (got {type(item).__name__}).")
        photos.append(item.convert("RGB"))
    return photos


def make_generate(pipe) -> Callable[..., Any]:
    """The app's generate function on `pipe`: (identity photos, template, prompt, identity scale, expression
    scale, steps, guidance scale, seed) -> PIL image. Several photos are references of one person: the pipeline
    averages their identity embeddings. Bad input raises ValueError with a message for the page."""

    def generate(identity, template, prompt, identity_scale, expression_scale, steps, guidance_scale, seed):
        import torch

        photos = identity_photos(identity)
        if not photos:
            raise ValueError("Add one or more identity photos of the person (or click an example identity).")
        if template is None:
            raise ValueError("Add an expression template (or click an example template).")
        for name, value in (
            ("identity scale", identity_scale),
            ("expression scale", expression_scale),
            ("guidance scale", guidance_scale),
            ("seed", seed),
            ("steps", steps),
        ):
            if value is None or not math.isfinite(float(value)):
                raise ValueError(f"The {name} must be a number, got {value!r}.")
        if int(steps) < 1:
            raise ValueError(f"Steps must be >= 1, got {steps}.")
        return pipe(
            prompt or "",
            identity_image=photos,
            expression_image=template.convert("RGB"),
            identity_scale=float(identity_scale),
            expression_scale=float(expression_scale),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance_scale),
            generator=torch.Generator("cpu").manual_seed(int(seed)),
        ).images[0]

    return generate


def build_app(
    pipe,
    *,
    identity_examples: Sequence[tuple[Sequence[str | os.PathLike], str]] = (),
    template_examples: Sequence[str | os.PathLike] = (),
    defaults: AppDefaults = AppDefaults(),
    title: str = "EmojiDiff: copy an expression, keep the identity",
    description: str = "",
):
    """The page as a `gradio.Blocks`: identity photos (several of one person), an expression template, prompt,
    identity and expression scales, steps, guidance, seed, and the output portrait.

    Args:
        pipe: an EmojiDiff pipeline with its face analyzer (and expression encoder, for a code-stream adapter) set.
        identity_examples: ``(photo paths of one person, prompt)`` rows shown as clickable examples.
        template_examples: expression template image paths shown as clickable examples.
        defaults: initial control values.
        title: page heading.
        description: markdown under the heading.
    """
    gr = _import_gradio()
    generate = make_generate(pipe)

    def on_generate(*args):
        try:
            return generate(*args)
        except ValueError as err:  # no face, bad input: show the message, not a traceback
            raise gr.Error(str(err)) from err

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}" + (f"\n\n{description}" if description else ""))
        with gr.Row():
            with gr.Column():
                identity = gr.Gallery(
                    label="Identity photos (one or more of the same person)",
                    type="pil",
                    interactive=True,
                    file_types=["image"],
                    columns=4,
                    height=220,
                    elem_id=ELEM_IDS["identity"],
                )
                template = gr.Image(label="Expression template", type="pil", height=220, elem_id=ELEM_IDS["template"])
                prompt = gr.Textbox(value=defaults.prompt, label="Prompt", elem_id=ELEM_IDS["prompt"])
                with gr.Row():
                    identity_scale = gr.Slider(
                        0.0, 1.5, value=defaults.identity_scale, step=0.05, label="Identity scale"
                    )
                    expression_scale = gr.Slider(
                        0.0, 1.5, value=defaults.expression_scale, step=0.05, label="Expression scale"
                    )
                with gr.Row():
                    steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="Steps")
                    guidance = gr.Slider(1.0, 15.0, value=defaults.guidance_scale, step=0.5, label="Guidance scale")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
                button = gr.Button("Generate", variant="primary", elem_id=ELEM_IDS["generate"])
            with gr.Column():
                output = gr.Image(
                    label="Portrait",
                    type="pil",
                    format="png",
                    height=400,
                    interactive=False,
                    elem_id=ELEM_IDS["output"],
                )
        if identity_examples:
            gr.Examples(
                [[[str(p) for p in photos], text] for photos, text in identity_examples],
                [identity, prompt],
                label="Example identities (photos and a prompt)",
                elem_id=ELEM_IDS["identity_examples"],
            )
        if template_examples:
            gr.Examples(
                [[str(p)] for p in template_examples],
                [template],
                label="Example expression templates",
                elem_id=ELEM_IDS["template_examples"],
            )
        button.click(
            on_generate,
            [identity, template, prompt, identity_scale, expression_scale, steps, guidance, seed],
            output,
            concurrency_limit=1,
        )
    return demo


def load_pipeline(
    model: str,
    *,
    face_model: str = "antelopev2",
    face_root: str | os.PathLike = "~/.insightface",
    expression_encoder: str | None = None,
    device: str | None = None,
):
    """An EmojiDiff pipeline folder or Hub id on `device` (cuda in fp16 when available, else cpu in fp32) with an
    insightface pack as its face analyzer and, if given, a ``module:factory`` expression encoder."""
    import torch

    from .face import FaceAnalyzer
    from .pipeline import EmojiDiffPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(model, torch_dtype=dtype).to(device)
    pipe.set_face_analyzer(FaceAnalyzer(face_model, face_root))
    if expression_encoder:
        from .expression import load_expression_encoder

        pipe.set_expression_encoder(load_expression_encoder(expression_encoder))
    return pipe


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --share: where the page is served."""
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (0.0.0.0 for every interface; env GRADIO_SERVER_NAME)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (env GRADIO_SERVER_PORT; default 7860)",
    )
    parser.add_argument("--share", action="store_true", help="ask gradio for a public share link")


def check_server_args(args: argparse.Namespace, refuse: Callable[[str], None]) -> None:
    if not 0 <= args.port <= 65535:
        refuse(f"--port must be in [0, 65535], got {args.port}.")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model and the face pack: a real EmojiDiff folder (env EMOJIDIFF_MODEL, INSIGHTFACE_MODEL,
    INSIGHTFACE_ROOT)."""
    parser.add_argument(
        "--model",
        default=os.environ.get("EMOJIDIFF_MODEL"),
        help="EmojiDiff pipeline folder or Hub id (env EMOJIDIFF_MODEL)",
    )
    parser.add_argument(
        "--face_model",
        default=os.environ.get("INSIGHTFACE_MODEL", "antelopev2"),
        help="insightface model pack name (env INSIGHTFACE_MODEL; default antelopev2)",
    )
    parser.add_argument(
        "--face_root",
        default=os.environ.get("INSIGHTFACE_ROOT", "~/.insightface"),
        help="folder holding models/<face_model>/ (env INSIGHTFACE_ROOT)",
    )
    parser.add_argument(
        "--expression_encoder",
        default=None,
        help="'module:factory' ExpressionEncoder, for models whose expression branch has a code stream",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def check_model_args(args: argparse.Namespace, refuse: Callable[[str], None]) -> None:
    """Every check of --model and the face pack that needs no model, before anything is loaded."""
    from .cli import check_device, check_model
    from .face_loading import find_model_dir

    if args.model is None:
        refuse(
            "--model (or EMOJIDIFF_MODEL) is required: an EmojiDiff pipeline folder or Hub id (the synthetic "
            "world's app, which needs no setup, is `emojidiff-synthetic app`)."
        )
    check_model(args.model, refuse)
    try:
        find_model_dir(args.face_model, args.face_root)
    except (FileNotFoundError, ValueError) as err:
        refuse(f"--face_model {args.face_model!r} --face_root {args.face_root!r}: {err}")
    check_device(args.device, refuse)


def launch(
    demo,
    args: argparse.Namespace,
    allowed_paths: Sequence[str | os.PathLike] = (),
    css: str = APP_CSS,
    block: bool = True,
) -> None:
    """Serve `demo` as --host/--port/--share say, with the page's `css`; blocks until stopped unless `block` is
    False (then ``demo.close()`` stops it)."""
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        allowed_paths=[str(Path(p)) for p in allowed_paths],
        css=css,
        prevent_thread_lock=not block,
    )


def main(argv: list[str] | None = None, prog: str = "emojidiff app") -> int:
    """Serve an EmojiDiff pipeline folder or Hub id (with an insightface pack) as the app."""
    parser = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    add_model_args(parser)
    add_server_args(parser)
    args = parser.parse_args(argv)

    def refuse(message: str) -> None:
        raise SystemExit(f"{prog}: {message}")

    check_model_args(args, refuse)
    check_server_args(args, refuse)
    _import_gradio()
    pipe = load_pipeline(
        args.model,
        face_model=args.face_model,
        face_root=args.face_root,
        expression_encoder=args.expression_encoder,
        device=args.device,
    )
    launch(build_app(pipe), args)
    return 0
