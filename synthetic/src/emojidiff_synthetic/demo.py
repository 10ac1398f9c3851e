"""`emojidiff-synthetic demo`: the embedded default of the synthetic world as one grid (what `make demo` runs);
`emojidiff-synthetic app` serves it as the Gradio app (what `make app` runs; synthetic/src/emojidiff_synthetic/app.py).

Held-out identities (rows) x held-out expression templates (columns), drawn by the shipped tiny base model with the
shipped adapter, plus one identity x all 64 templates. On your own weights use the library's
`emojidiff generate --model <pipeline folder or Hub id>`.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from emojidiff_pipeline.cli import check_device, check_output

PROG = "emojidiff-synthetic demo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojidiff-synthetic", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="held-out identities x expression templates from the embedded default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--guidance_scale", type=float, default=5.0)
    demo.add_argument("--identity_scale", type=float, default=1.0)
    demo.add_argument("--expression_scale", type=float, default=1.0)
    demo.add_argument("--device", default=None, help="torch device (default: the pipeline stays on the cpu)")
    demo.add_argument("--output", default="outputs/emojidiff.png")
    demo.add_argument("--grid_identities", type=int, default=4, help="held-out identities (rows, at most 16)")
    templates_help = "expression templates (columns, at most 64; the first 44 show one factor each)"
    demo.add_argument("--grid_templates", type=int, default=6, help=templates_help)
    from .app import add_app_parser

    add_app_parser(sub)
    return parser


def _refuse(message: str) -> None:
    raise SystemExit(f"{PROG}: {message}")


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model, run before anything is loaded: one line naming the argument, exit 1."""
    if args.steps < 1:
        _refuse(f"--steps must be >= 1, got {args.steps}.")
    for name in ("guidance_scale", "identity_scale", "expression_scale"):
        if not math.isfinite(getattr(args, name)):
            _refuse(f"--{name} must be a finite number, got {getattr(args, name)}.")
    check_device(args.device, _refuse)
    check_output(args.output, _refuse)


def demo(args: argparse.Namespace) -> int:
    """The embedded synthetic world: held-out identities x held-out expression templates, as one grid."""
    import numpy as np
    import torch

    from .cases import expression_benchmark, save_grid, save_identity_sheet
    from .load import EMOJIDIFF_DIR, load_world

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
        raise SystemExit(
            f"--grid_templates must be in [1, 64] and --grid_identities in [1, 16], got "
            f"{args.grid_templates} and {args.grid_identities}."
        )
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
                generator=[
                    torch.Generator().manual_seed(args.seed * 10_000 + offset + start + k) for k in range(len(chunk))
                ],
                output_type="np",
            ).images
            images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
        return images

    path = save_grid(generate(grid_cases, 0), grid_cases, args.output, max(args.grid_identities, args.grid_templates))
    print(f"wrote {Path(path).resolve()} (first column: identity references; first row: expression templates)")
    output = Path(args.output)
    sheet = save_identity_sheet(
        generate(sheet_cases, 5_000), sheet_cases, output.with_name(output.stem + "_one_identity" + output.suffix)
    )
    print(f"wrote {sheet.resolve()} (top left: the identity reference; then templates above their outputs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "demo":
        check_args(args)
        return demo(args)
    if args.command == "app":
        from .app import app_main

        return app_main(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
