"""Evaluate EmojiDiff rows with eval-side instruments; writes results.json, results.md and image grids.

Synthetic world (out of the box): held-out identities as references, held-out identities' renders as templates,
prompts asking for a style other than the template's, all styles.

    python training/evaluate.py --out docs/results --row base=base --row identity_only=<adapter>@id_only \
        --row stage1_same_identity=<adapter> [--num_identities 16 --num_templates 8]

Row specs: ``base`` (no adapter), ``<adapter folder>`` (both branches), ``<adapter folder>@id_only``
(expression scale 0). On SDXL pass ``--pretrained_model`` and eval-side insightface instruments with
``--eval_face_pack`` / ``--eval_expression_estimator module:factory``, and ``--references`` / ``--templates`` folders.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("evaluate")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", action="append", required=True, help="NAME=base | NAME=<adapter>[@id_only]")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--title", default="EmojiDiff in the synthetic world: held-out identities and templates")
    p.add_argument("--pretrained_model", default=None, help="base pipeline (default: the shipped synthetic base)")
    p.add_argument("--num_identities", type=int, default=16)
    p.add_argument("--num_templates", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=6, help="identities and templates shown in each row's grid")
    args = p.parse_args(input_args)
    for spec in args.row:
        if "=" not in spec:
            p.error(f"--row must be NAME=SPEC, got {spec!r}")
    for name in ("num_identities", "num_templates", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_identities < 3:
        p.error("--num_identities must be >= 3 (leakage needs strangers)")
    return args




def generate_row(pipe, spec: str, cases, face, args) -> list[np.ndarray]:
    """One generated uint8 image per case for a row spec."""
    from emojidiff_pipeline import EmojiDiffAdapter

    id_only = spec.endswith("@id_only")
    folder = spec[: -len("@id_only")] if id_only else spec
    if folder == "base":
        if pipe.emoji_adapter is not None:
            pipe.unload_emoji_adapter()
    else:
        pipe.set_emoji_adapter(EmojiDiffAdapter.from_pretrained(folder))
    pipe.set_face_analyzer(face)
    images = []
    for start in range(0, len(cases), args.batch_size):
        chunk = cases[start : start + args.batch_size]
        kwargs = {}
        if folder != "base":
            kwargs = dict(identity_image=[[c.reference] for c in chunk], expression_image=[c.template for c in chunk],
                          expression_scale=0.0 if id_only else 1.0)  # fmt: skip
        gens = [torch.Generator().manual_seed(args.seed * 100_000 + start + k) for k in range(len(chunk))]
        out = pipe([c.prompt for c in chunk], num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                   generator=gens, output_type="np", **kwargs).images  # fmt: skip
        images.extend((out * 255).round().clip(0, 255).astype(np.uint8))
    return images



def main(args: argparse.Namespace) -> dict:
    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.evaluation import Instruments, same_person_similarity, score_row, write_report
    from emojidiff_pipeline.synthetic.cases import held_out_cases, save_grid
    from emojidiff_pipeline.synthetic.instruments import classify_styles
    from emojidiff_pipeline.synthetic.load import BASE_DIR, expression_scorer, load_world

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    world = load_world()
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model or BASE_DIR)
    cases, pairs = held_out_cases(args.num_identities, args.num_templates, args.seed)
    style = world.instrument("style")
    inst = Instruments(
        face=world.eval_face,
        expression=expression_scorer("eval"),
        style=lambda images: classify_styles(style, np.stack(images))["labels"],
    )
    rows = {}
    out = Path(args.out)
    for spec in args.row:
        name, row_spec = spec.split("=", 1)
        logger.info("row %s (%s): generating %d images", name, row_spec, len(cases))
        images = generate_row(pipe, row_spec, cases, world.train_face, args)
        rows[name] = score_row(images, cases, inst)
        save_grid(images, cases, out / f"grid_{name}.png", args.grid)
        logger.info("row %s: %s", name, rows[name])
    extra = {
        "same_person_identity_similarity": round(same_person_similarity(pairs, world.eval_face), 4),
        "cases": f"{args.num_identities} held-out identities x {args.num_templates} held-out templates",
    }
    command = "python training/evaluate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_report(rows, extra, out, command, args.title)
    return {"rows": rows, **extra}


if __name__ == "__main__":
    main(parse_args())
