"""`emojidiff-synthetic app` (what `make app` runs): the Gradio app on the embedded synthetic default, no setup.

The page is the library's (`emojidiff_pipeline.app.build_app`); this module supplies the world's pipeline, its own
face front-end (train-side keypoint detector and recognizer, as `emojidiff-synthetic demo` uses) and clickable
examples rendered from held-out people: a few photos of each example identity and one template per expression.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from emojidiff_pipeline.app import (
    APP_CSS,
    ELEM_IDS,
    AppDefaults,
    add_server_args,
    build_app,
    check_server_args,
    launch,
)
from emojidiff_pipeline.cli import check_device

PROG = "emojidiff-synthetic app"
# Template expressions shown as examples (names of EXPRESSION_PRESETS), one template person each.
# The world's 64 px images are scaled up without smoothing.
SYNTHETIC_CSS = APP_CSS + "".join(
    f"#{ELEM_IDS[k]} img {{ image-rendering: pixelated; }}\n" for k in ("template", "output")
)
EXAMPLE_EXPRESSIONS = ("smile", "laugh", "wink", "surprise", "anger", "sadness", "kiss", "sleepy")


def default_examples_dir() -> Path:
    """Where the rendered examples are written: ``$XDG_CACHE_HOME/emojidiff_synthetic/app_examples``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "emojidiff_synthetic" / "app_examples"


def render_examples(
    folder: str | os.PathLike, num_identities: int = 4, photos_per_identity: int = 3, seed: int = 0
) -> tuple[list[tuple[list[Path], str]], list[Path]]:
    """Render the app's examples into `folder` (same arguments, same bytes) and return them.

    Returns ``(identities, templates)``: per held-out identity, `photos_per_identity` neutral photos (one frontal,
    the rest with a small pose jitter, all in one style) and a caption in that style as the prompt; and one
    template PNG per name in `EXAMPLE_EXPRESSIONS`, each of another held-out person in a random style.
    """
    import numpy as np
    from PIL import Image

    from .collection import make_caption
    from .renderer import EXPRESSION_PRESETS, Expression, Identity, Pose, Style, render
    from .world import DEFAULT_NUM_IDENTITIES, is_held_out

    if num_identities < 1 or photos_per_identity < 1:
        raise ValueError(
            f"`num_identities` and `photos_per_identity` must be >= 1, got {num_identities} and {photos_per_identity}."
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    held_out = [i for i in range(DEFAULT_NUM_IDENTITIES) if is_held_out(i)]
    rng = np.random.default_rng([seed, 12])
    people = [int(i) for i in rng.permutation(held_out)[: num_identities + len(EXAMPLE_EXPRESSIONS)]]

    def save(image, name: str) -> Path:
        path = folder / name
        Image.fromarray(image).save(path)
        return path

    identities = []
    for k, person in enumerate(people[:num_identities]):
        identity, style = Identity.from_seed(person), Style.random(rng)
        poses = [Pose()] + [Pose.random(rng) for _ in range(photos_per_identity - 1)]
        photos = [
            save(render(identity, Expression(), style, pose).image, f"identity{k}_id{person}_photo{j}.png")
            for j, pose in enumerate(poses)
        ]
        identities.append((photos, make_caption(identity, Expression(), style, rng)))
    templates = [
        save(
            render(Identity.from_seed(person), EXPRESSION_PRESETS[name], Style.random(rng), Pose()).image,
            f"template_{name}_id{person}.png",
        )
        for name, person in zip(EXAMPLE_EXPRESSIONS, people[num_identities:])
    ]
    return identities, templates


def build_synthetic_app(examples_dir: str | os.PathLike | None = None, steps: int = 20, device: str | None = None):
    """The app on the embedded default: the world's pipeline and face front-end, examples rendered into
    `examples_dir` (default :func:`default_examples_dir`). Returns ``(demo, examples_dir)``."""
    import torch

    from .load import load_world

    world = load_world()
    pipe = world.pipeline(torch_dtype=torch.float32)
    if device is not None:
        pipe = pipe.to(device)
    pipe.set_face_analyzer(world.train_face)
    examples_dir = Path(examples_dir) if examples_dir is not None else default_examples_dir()
    identities, templates = render_examples(examples_dir)
    defaults = AppDefaults(prompt=identities[0][1], steps=steps, guidance_scale=5.0)
    description = (
        "The embedded synthetic default: a tiny SDXL-shaped base model (64 px emoji portraits) with the trained "
        "EmojiDiff adapter. Click an example identity (several photos of one held-out person; their identity "
        "embeddings are averaged) and an example template, or upload your own renders. On real SDXL weights: "
        "`emojidiff app --model <EmojiDiff folder> --face_root <insightface root>`."
    )
    demo = build_app(
        pipe,
        identity_examples=identities,
        template_examples=templates,
        defaults=defaults,
        title="EmojiDiff in the synthetic emoji world",
        description=description,
    )
    return demo, examples_dir


def add_app_parser(sub) -> argparse.ArgumentParser:
    """The `app` subcommand of `emojidiff-synthetic`."""
    app = sub.add_parser("app", help="the Gradio app on the embedded default, with clickable examples")
    app.add_argument("--steps", type=int, default=20, help="initial number of inference steps")
    app.add_argument("--examples_dir", default=None, help="where the example renders go (default: the user cache)")
    app.add_argument("--device", default=None, help="torch device (default: the pipeline stays on the cpu)")
    add_server_args(app)
    return app


def app_main(args: argparse.Namespace) -> int:
    from .load import EMOJIDIFF_DIR

    def refuse(message: str) -> None:
        raise SystemExit(f"{PROG}: {message}")

    if args.steps < 1:
        refuse(f"--steps must be >= 1, got {args.steps}.")
    check_server_args(args, refuse)
    check_device(args.device, refuse)
    if not (EMOJIDIFF_DIR / "emoji_adapter" / "config.json").exists():
        refuse(
            f"the embedded synthetic EmojiDiff model is not in this checkout ({EMOJIDIFF_DIR}); build it with "
            "`python training/results.py`, or serve your own weights with `emojidiff app --model <folder>`."
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to the page, one line each
    demo, examples_dir = build_synthetic_app(args.examples_dir, steps=args.steps, device=args.device)
    launch(demo, args, allowed_paths=[examples_dir], css=SYNTHETIC_CSS)
    return 0
