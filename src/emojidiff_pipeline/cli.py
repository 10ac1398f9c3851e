"""`emojidiff` command line: `emojidiff generate` runs the pipeline on an SDXL folder or Hub id."""

from __future__ import annotations

import argparse
import logging
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
    gen.add_argument("--prompt", default="a portrait photo", help="text prompt")
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
    gen.add_argument("--grid_templates", type=int, default=6, help="synthetic demo: expression templates (columns)")
    return parser


def demo(args: argparse.Namespace) -> int:
    """The embedded synthetic world: held-out identities x held-out expression templates, as one grid."""
    import numpy as np
    import torch

    from .synthetic.cases import held_out_cases, save_grid
    from .synthetic.load import EMOJIDIFF_DIR, load_world

    if not (EMOJIDIFF_DIR / "emoji_adapter" / "config.json").exists():
        print(
            "The embedded synthetic EmojiDiff model is not in this checkout yet (build it with "
            "`python training/results.py`).\nRun the pipeline on your own weights instead:\n"
            "  emojidiff generate --model <emojidiff pipeline folder or Hub id> --identity me.jpg "
            "--expression grin.jpg --prompt 'a portrait photo'\n"
            "See README.md, 'Use it on your SDXL weights'."
        )
        return 0
    world = load_world()
    pipe = world.pipeline(torch_dtype=torch.float32)
    pipe.set_face_analyzer(world.train_face)
    cases, _ = held_out_cases(args.grid_identities, args.grid_templates, args.seed)
    images = []
    for start in range(0, len(cases), 12):
        chunk = cases[start : start + 12]
        out = pipe(
            [c.prompt for c in chunk],
            identity_image=[[c.reference] for c in chunk],
            expression_image=[c.template for c in chunk],
            identity_scale=args.identity_scale,
            expression_scale=args.expression_scale,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=[torch.Generator().manual_seed(args.seed * 10_000 + start + k) for k in range(len(chunk))],
            output_type="np",
        ).images
        images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
    path = save_grid(images, cases, args.output, max(args.grid_identities, args.grid_templates))
    print(f"wrote {Path(path).resolve()} (first column: identity references; first row: expression templates)")
    return 0


def generate(args: argparse.Namespace) -> int:
    if args.model is None:
        if args.identity or args.expression:
            raise SystemExit("--identity / --expression need --model (the synthetic demo picks its own faces).")
        return demo(args)
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    import PIL.Image
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
    identity = [PIL.Image.open(p).convert("RGB") for p in args.identity] if args.identity else None
    expression = PIL.Image.open(args.expression).convert("RGB") if args.expression else None
    image = pipe(
        args.prompt,
        identity_image=identity,
        expression_image=expression,
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
