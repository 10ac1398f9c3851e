"""`emojidiff` command line: `emojidiff generate` runs the pipeline on an SDXL folder or Hub id."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path

logger = logging.getLogger("emojidiff_pipeline.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojidiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate portraits: identity from --identity, expression from --expression")
    gen.add_argument("--model", default=None, help="EmojiDiff pipeline folder or Hub id (default: embedded synthetic model)")
    gen.add_argument("--identity", nargs="*", default=None, help="identity reference photo(s) of one person")
    gen.add_argument("--expression", default=None, help="expression template photo")
    gen.add_argument("--prompt", default=None, help="text prompt (with --model; default: 'a portrait photo')")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance_scale", type=float, default=5.0)
    gen.add_argument("--identity_scale", type=float, default=1.0)
    gen.add_argument("--expression_scale", type=float, default=1.0)
    gen.add_argument("--face_model", default="antelopev2", help="insightface model pack name")
    gen.add_argument("--face_root", default="~/.insightface", help="folder holding models/<face_model>/")
    gen.add_argument("--expression_encoder", default=None,
                     help="'module:factory' ExpressionEncoder, for models whose expression branch has a code stream")
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--output", default="outputs/emojidiff.png")
    gen.add_argument("--grid_identities", type=int, default=4, help="synthetic demo: held-out identities (rows)")
    gen.add_argument("--grid_templates", type=int, default=6,
                     help="synthetic demo: expression templates (columns, at most 64; the first 44 show one factor each)")
    return parser


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name, as on the Hugging Face Hub


def _refuse(message: str) -> None:
    raise SystemExit(f"emojidiff generate: {message}")


def _check_image(path: str, arg: str):
    """The decoded RGB image at `path`; a missing, folder, truncated or non-image file is refused by argument."""
    from .train.triplets import open_rgb

    if not Path(path).exists():
        _refuse(f"{arg} {path!r} does not exist.")
    if Path(path).is_dir():
        _refuse(f"{arg} {path!r} is a folder; pass an image file.")
    try:
        return open_rgb(path, arg)
    except ValueError as err:
        _refuse(str(err))


def _check_output(path: str) -> None:
    """Refuse an --output that cannot be written, before anything is loaded: a folder, a path inside a file, an
    unknown image extension, an unwritable place. Creates nothing."""
    import PIL.Image

    out = Path(path)
    if path.endswith(("/", os.sep)) or out.is_dir():
        _refuse(f"--output {path!r} is a folder; name an image file (e.g. {str(out / 'emojidiff.png')!r}).")
    if out.suffix.lower() not in PIL.Image.registered_extensions():
        _refuse(f"--output {path!r} has no image extension PIL can write (e.g. .png, .jpg), got {out.suffix!r}.")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        _refuse(f"--output {path!r} is inside {str(parent)!r}, which is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        _refuse(f"--output {path!r} cannot be written: {str(out if out.exists() else parent)!r} is not writable.")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        _refuse(f"--device {device!r} is not a torch device: {err}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}  # fmt: skip
    if not available.get(kind, True):
        _refuse(f"--device {device!r}: {kind} is not available on this machine.")


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, run before anything is loaded: one line naming the argument, exit 1."""
    if args.steps < 1:
        _refuse(f"--steps must be >= 1, got {args.steps}.")
    for name in ("guidance_scale", "identity_scale", "expression_scale"):
        if not math.isfinite(getattr(args, name)):
            _refuse(f"--{name} must be a finite number, got {getattr(args, name)}.")
    if args.model is None:
        if args.identity or args.expression:
            _refuse("--identity / --expression need --model (the synthetic demo picks its own faces).")
        for name in ("prompt", "expression_encoder"):
            if getattr(args, name) is not None:
                _refuse(f"--{name} only applies with --model (the synthetic demo uses each case's own prompt and "
                        "its own expression encoder).")  # fmt: skip
    else:
        model = Path(args.model).expanduser()
        if model.is_file():
            _refuse(f"--model {args.model!r} is a file; pass an EmojiDiff pipeline folder or a Hub id.")
        if model.is_dir() and not (model / "model_index.json").is_file():
            _refuse(f"--model {args.model!r} has no model_index.json: it is not a diffusers pipeline folder.")
        if not model.exists():
            if not HUB_ID.fullmatch(args.model) or ".." in args.model or "--" in args.model:
                _refuse(f"--model {args.model!r} does not exist (and is not a Hub id of the form owner/name).")
            logger.info("--model %r is not a local folder; loading it as a Hub id.", args.model)
        if args.identity is not None and not args.identity:
            _refuse("--identity was given without any file.")
        args.identity_images = [_check_image(p, "--identity") for p in args.identity or []] or None
        args.expression_image = _check_image(args.expression, "--expression") if args.expression else None
    _check_device(args.device)
    _check_output(args.output)


def demo(args: argparse.Namespace) -> int:
    """The embedded synthetic world: held-out identities x held-out expression templates, as one grid."""
    import numpy as np
    import torch

    from emojidiff_synthetic.cases import expression_benchmark, save_grid, save_identity_sheet
    from emojidiff_synthetic.load import EMOJIDIFF_DIR, load_world

    if not (EMOJIDIFF_DIR / "emoji_adapter" / "config.json").exists():
        print(
            "The embedded synthetic EmojiDiff model is not in this checkout yet (build it with "
            "`python training/results.py`).\nRun the pipeline on your own weights instead:\n"
            "  emojidiff generate --model <emojidiff pipeline folder or Hub id> --identity me.jpg "
            "--expression grin.jpg --prompt 'a portrait photo'\n"
            "See README.md, 'Use it on your SDXL weights'."
        )
        return 0
    if not 1 <= args.grid_templates <= 64 or not 1 <= args.grid_identities <= 16:
        raise SystemExit(f"--grid_templates must be in [1, 64] and --grid_identities in [1, 16], got "
                         f"{args.grid_templates} and {args.grid_identities}.")  # fmt: skip
    world = load_world()
    pipe = world.pipeline(torch_dtype=torch.float32)
    if args.device is not None:
        pipe = pipe.to(args.device)
    pipe.set_face_analyzer(world.train_face)
    # the benchmark's templates: one factor each first (smile, frown, jaw open, pucker, eye closure, ...), then mixed
    cases, _, _ = expression_benchmark(args.grid_identities, 64, args.seed)
    grid_cases = [c for k, c in enumerate(cases) if k // args.grid_identities < args.grid_templates]
    sheet_cases = cases[:: args.grid_identities]  # the first reference person x all 64 templates

    def generate(chunk_cases, offset):
        images = []
        for start in range(0, len(chunk_cases), 12):
            chunk = chunk_cases[start : start + 12]
            out = pipe(
                [c.prompt for c in chunk],
                identity_image=[[c.reference] for c in chunk],
                expression_image=[c.template for c in chunk],
                identity_scale=args.identity_scale,
                expression_scale=args.expression_scale,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                generator=[torch.Generator().manual_seed(args.seed * 10_000 + offset + start + k)
                           for k in range(len(chunk))],  # fmt: skip
                output_type="np",
            ).images
            images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
        return images

    path = save_grid(generate(grid_cases, 0), grid_cases, args.output, max(args.grid_identities, args.grid_templates))
    print(f"wrote {Path(path).resolve()} (first column: identity references; first row: expression templates)")
    output = Path(args.output)
    sheet = save_identity_sheet(generate(sheet_cases, 5_000), sheet_cases,
                                output.with_name(output.stem + "_one_identity" + output.suffix))  # fmt: skip
    print(f"wrote {sheet.resolve()} (top left: the identity reference; then templates above their outputs)")
    return 0


def generate(args: argparse.Namespace) -> int:
    check_args(args)
    if args.model is None:
        return demo(args)
    import torch

    from .face import FaceAnalyzer
    from .pipeline import EmojiDiffPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_face_analyzer(FaceAnalyzer(args.face_model, args.face_root))
    if args.expression_encoder:
        from .expression import load_expression_encoder

        pipe.set_expression_encoder(load_expression_encoder(args.expression_encoder))
    image = pipe(
        "a portrait photo" if args.prompt is None else args.prompt,
        identity_image=args.identity_images,
        expression_image=args.expression_image,
        identity_scale=args.identity_scale,
        expression_scale=args.expression_scale,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator(device="cpu").manual_seed(args.seed),
    ).images[0]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "generate":
        return generate(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
