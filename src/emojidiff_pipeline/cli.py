"""`emojidiff` command line: `emojidiff generate --model ...` runs the pipeline on an EmojiDiff folder or Hub id;
`emojidiff app --model ...` serves it as the Gradio app.

The synthetic world's demo lives in its own package (synthetic/): `emojidiff-synthetic demo`.
"""

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
    gen.add_argument("--model", default=None, help="EmojiDiff pipeline folder or Hub id (required)")
    gen.add_argument("--identity", nargs="*", default=None, help="identity reference photo(s) of one person")
    gen.add_argument("--expression", default=None, help="expression template photo")
    gen.add_argument("--prompt", default=None, help="text prompt (default: 'a portrait photo')")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance_scale", type=float, default=5.0)
    gen.add_argument("--identity_scale", type=float, default=1.0)
    gen.add_argument("--expression_scale", type=float, default=1.0)
    gen.add_argument(
        "--face_model",
        default="antelopev2",
        help="insightface model pack name, or 'module:factory' returning a face analyzer (e.g. "
        "emojidiff_pipeline.face_models.dlib_models:analyzer, dlib + MediaPipe, no licence limits)",
    )
    gen.add_argument("--face_root", default="~/.insightface", help="folder holding models/<face_model>/")
    gen.add_argument(
        "--expression_encoder",
        default=None,
        help="'module:factory' ExpressionEncoder, for models whose expression branch has a code stream",
    )
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--output", default="outputs/emojidiff.png")
    sub.add_parser("app", add_help=False, help="the Gradio app on --model (`emojidiff app --help`)")
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


def check_output(path: str, refuse=_refuse) -> None:
    """Refuse an --output that cannot be written, before anything is loaded: a folder, a path inside a file, an
    unknown image extension, an unwritable place. Creates nothing. `refuse(message)` raises (a CLI's own prefix)."""
    import PIL.Image

    out = Path(path)
    if path.endswith(("/", os.sep)) or out.is_dir():
        refuse(f"--output {path!r} is a folder; name an image file (e.g. {str(out / 'emojidiff.png')!r}).")
    if out.suffix.lower() not in PIL.Image.registered_extensions():
        refuse(f"--output {path!r} has no image extension PIL can write (e.g. .png, .jpg), got {out.suffix!r}.")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        refuse(f"--output {path!r} is inside {str(parent)!r}, which is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        refuse(f"--output {path!r} cannot be written: {str(out if out.exists() else parent)!r} is not writable.")


def check_device(device: str | None, refuse=_refuse) -> None:
    """Refuse a --device that torch cannot parse or this machine does not have; `refuse(message)` raises."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        refuse(f"--device {device!r} is not a torch device: {err}")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if not available.get(kind, True):
        refuse(f"--device {device!r}: {kind} is not available on this machine.")


def check_model(model: str, refuse=_refuse) -> None:
    """Refuse a --model that is a file, a folder without model_index.json, or neither a folder nor a Hub id."""
    path = Path(model).expanduser()
    if path.is_file():
        refuse(f"--model {model!r} is a file; pass an EmojiDiff pipeline folder or a Hub id.")
    if path.is_dir() and not (path / "model_index.json").is_file():
        refuse(f"--model {model!r} has no model_index.json: it is not a diffusers pipeline folder.")
    if not path.exists():
        if not HUB_ID.fullmatch(model) or ".." in model or "--" in model:
            refuse(f"--model {model!r} does not exist (and is not a Hub id of the form owner/name).")
        logger.info("--model %r is not a local folder; loading it as a Hub id.", model)


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, run before anything is loaded: one line naming the argument, exit 1."""
    if args.model is None:
        _refuse(
            "--model is required: an EmojiDiff pipeline folder or Hub id (the synthetic world's demo is "
            "`emojidiff-synthetic demo`, in synthetic/)."
        )
    if args.steps < 1:
        _refuse(f"--steps must be >= 1, got {args.steps}.")
    for name in ("guidance_scale", "identity_scale", "expression_scale"):
        if not math.isfinite(getattr(args, name)):
            _refuse(f"--{name} must be a finite number, got {getattr(args, name)}.")
    check_model(args.model)
    if args.identity is not None and not args.identity:
        _refuse("--identity was given without any file.")
    args.identity_images = [_check_image(p, "--identity") for p in args.identity or []] or None
    args.expression_image = _check_image(args.expression, "--expression") if args.expression else None
    check_device(args.device)
    check_output(args.output)


def generate(args: argparse.Namespace) -> int:
    check_args(args)
    import torch

    from .face import FaceAnalyzer
    from .hooks import is_factory_spec, load_factory
    from .pipeline import EmojiDiffPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    if is_factory_spec(args.face_model):
        pipe.set_face_analyzer(load_factory(args.face_model, "--face_model"))
    else:
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["app"]:  # the Gradio app has its own parser (emojidiff_pipeline.app)
        from .app import main as app_main

        return app_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "generate":
        return generate(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
