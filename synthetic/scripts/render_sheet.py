"""Write a contact sheet of the synthetic renderer (identities x expression presets, plus a block of styles) for a
person to look at.

    PYTHONPATH=src:synthetic/src python synthetic/scripts/render_sheet.py --output docs/renderer_sheet.png
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emojidiff_synthetic import (
    EXPRESSION_FIELDS,
    EXPRESSION_PRESETS,
    STYLE_CHOICES,
    Expression,
    Identity,
    Pose,
    Style,
    render,
)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/renderer_sheet.png"), help="PNG to write.")
    parser.add_argument("--size", type=int, default=64, help="Render size in pixels (one cell per render).")
    parser.add_argument("--identities", type=int, default=6, help="Rows of identities in the expression block.")
    parser.add_argument("--seed", type=int, default=0, help="First identity seed.")
    parser.add_argument("--label_height", type=int, default=12, help="Height of the label strips in pixels.")
    args = parser.parse_args(input_args)
    if args.size not in (64, 128):
        raise ValueError(f"`--size` must be 64 or 128, got {args.size}.")
    if args.identities < 1:
        raise ValueError(f"`--identities` must be >= 1, got {args.identities}.")
    return args


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    while text and draw.textlength(text) > width - 2:
        text = text[:-1]
    draw.text((xy[0] + 1, xy[1]), text, fill=(20, 20, 20))


def main(args: argparse.Namespace) -> Path:
    s, lh = args.size, args.label_height
    presets = list(EXPRESSION_PRESETS)
    identities = [Identity.from_seed(args.seed + i) for i in range(args.identities)]
    style = Style(background="white", pattern="plain", rendering="flat", palette="natural")

    # block 2: one row per style field value, a different identity and expression per column
    style_rows: list[tuple[str, list[Style]]] = []
    n_cols = len(presets)
    rng = np.random.default_rng(args.seed + 1000)
    for field, choices in STYLE_CHOICES.items():
        row = []
        for j in range(n_cols):
            kw = {k: v[int(rng.integers(len(v)))] for k, v in STYLE_CHOICES.items()}
            kw[field] = choices[j % len(choices)]
            row.append(Style(**kw))
        style_rows.append((field, row))

    # block 3: each expression factor swept from 0 to 1 on one face (two factors per row)
    levels = np.linspace(0.0, 1.0, n_cols // 2)
    sweep_rows = [EXPRESSION_FIELDS[i : i + 2] for i in range(0, len(EXPRESSION_FIELDS), 2)]

    cols = n_cols
    rows = len(identities) + len(style_rows) + len(sweep_rows)
    height = lh + rows * s + lh * (1 + len(style_rows)) + lh * (1 + len(sweep_rows))
    sheet = Image.new("RGB", (cols * s, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, name in enumerate(presets):
        _label(draw, (j * s, 0), name, s)
    y = lh
    for identity in identities:
        for j, name in enumerate(presets):
            sheet.paste(Image.fromarray(render(identity, EXPRESSION_PRESETS[name], style, size=s).image), (j * s, y))
        y += s
    draw.text((2, y), "styles (label = varied field's value; identity, expression, pose random)", fill=(20, 20, 20))
    y += lh
    for r, (field, row) in enumerate(style_rows):
        for j, st in enumerate(row):
            value = getattr(st, field)
            _label(draw, (j * s, y), value, s)
            rr = np.random.default_rng(args.seed + 2000 + 100 * r + j)
            res = render(Identity.random(rr), Expression.random(rr), st, Pose.random(rr), size=s)
            sheet.paste(Image.fromarray(res.image), (j * s, y + lh))
        y += s + lh
    draw.text((2, y), "expression factors swept 0 -> 1 (others at rest, gaze 0.5)", fill=(20, 20, 20))
    y += lh
    sweep_identity = dataclasses.replace(Identity.from_seed(args.seed + 3000), glasses=False)
    for fields in sweep_rows:
        for k, field in enumerate(fields):
            x0 = k * len(levels) * s
            _label(draw, (x0, y), field, len(levels) * s)
            for j, level in enumerate(levels):
                expr = Expression(**{field: float(level)})
                res = render(sweep_identity, expr, style, size=s)
                sheet.paste(Image.fromarray(res.image), (x0 + j * s, y + lh))
        y += s + lh
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    return args.output


if __name__ == "__main__":
    main(parse_args())
