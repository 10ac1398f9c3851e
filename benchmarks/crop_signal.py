"""How much of each expression factor's pixel change the template crop and its mask keep, per crop geometry.

    python benchmarks/crop_signal.py [--renders 32] -> docs/expression_crop.md / .json

For held-out identities in random styles and poses, each factor is set to its far value (gaze to 0, the others to 1)
against a neutral face; the kept share is the masked crop's absolute pixel change, in image-pixel units, over the
whole image's change. 1.0 would keep all of it; the rest is cut by the crop border or greyed by the mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def kept_share(neutral, changed, geometry: str, size: int = 224) -> float:
    from emojidiff_pipeline.face_geometry import align_expression_face, expression_crop_matrix, expression_mask

    full = np.abs(neutral.image.astype(np.float32) - changed.image.astype(np.float32)).sum()
    if full == 0:
        return float("nan")
    crops = [
        align_expression_face(r.image, neutral.keypoints, size, geometry).astype(np.float32)
        for r in (neutral, changed)
    ]
    area = abs(np.linalg.det(expression_crop_matrix(neutral.keypoints, size, geometry)[:, :2]))
    kept = (np.abs(crops[0] - crops[1]) * expression_mask(size, geometry)[..., None]).sum() / area
    return float(kept / full)


def main(argv=None) -> dict:
    from emojidiff_pipeline.face_geometry import EXPRESSION_CROPS
    from emojidiff_synthetic.renderer import EXPRESSION_FIELDS, Expression, Identity, Pose, Style, render
    from emojidiff_synthetic.world import DEFAULT_NUM_IDENTITIES, is_held_out

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--renders", type=int, default=32, help="identity/style/pose draws per factor")
    p.add_argument("--out", default="docs/expression_crop")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    people = [i for i in range(DEFAULT_NUM_IDENTITIES) if is_held_out(i)]
    shares = {g: {f: [] for f in EXPRESSION_FIELDS} for g in EXPRESSION_CROPS}
    for k in range(args.renders):
        identity, style, pose = Identity.from_seed(people[k % len(people)]), Style.random(rng), Pose.random(rng)
        neutral = render(identity, Expression(), style, pose, size=128)
        for field in EXPRESSION_FIELDS:
            changed = render(
                identity, Expression(**{field: 0.0 if field.startswith("gaze") else 1.0}), style, pose, size=128
            )
            for g in EXPRESSION_CROPS:
                shares[g][field].append(kept_share(neutral, changed, g))
    table = {g: {f: float(np.nanmean(v)) for f, v in by.items()} for g, by in shares.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/crop_signal.py" + (f" --renders {args.renders}" if args.renders != 32 else "")
    out.with_suffix(".json").write_text(
        json.dumps({"kept_share": table, "renders": args.renders, "command": command}, indent=1)
    )
    lines = [
        "# Expression signal kept by the template crop",
        "",
        f"Written by `{command}` (do not edit by hand): share"
        f" of each factor's pixel change (neutral -> far value) that the masked crop keeps, mean of {args.renders}"
        " held-out identities in random styles and poses at 128 px.",
        "",
        "| geometry | " + " | ".join(EXPRESSION_FIELDS) + " |",
        "| --- |" + " --- |" * len(EXPRESSION_FIELDS),
    ]
    for g, by in table.items():
        lines.append(f"| {g} | " + " | ".join(f"{by[f]:.2f}" for f in EXPRESSION_FIELDS) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


if __name__ == "__main__":
    main()
