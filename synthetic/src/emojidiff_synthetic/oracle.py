"""Oracle cross-identity triplets, rendered directly: the upper bound that real data cannot give.

For a template photo of person A (from the collection's train split) and person B != A, the target is rendered
from B's identity with A's exact expression (ground truth), in the style and pose of one of B's own photos; the
references are B's other collection photos. Only the oracle row of the results may use this (it reads the renderer's
ground truth); method code must not.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from emojidiff_pipeline.train.triplets import Triplet, group_by_identity, write_triplets

from .collection import Collection, make_caption
from .renderer import render


def build_oracle_triplets(
    collection_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_triplets: int,
    num_references: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/triplets.jsonl`` and its rendered targets; returns the manifest path. Deterministic."""
    collection = Collection(collection_root)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    truth = {g["path"]: g for g in collection.ground_truth()}
    records = collection.records("train")
    by_identity = group_by_identity(records)
    identities = sorted(by_identity)
    rng = np.random.default_rng([seed, 11])
    triplets = []
    for n in range(num_triplets):
        a, b = rng.choice(len(identities), size=2, replace=False)
        template = by_identity[identities[a]][int(rng.integers(len(by_identity[identities[a]])))]
        photos_b = by_identity[identities[b]]
        order = rng.permutation(len(photos_b))
        styled_as, refs = photos_b[order[0]], [photos_b[k] for k in order[1 : 1 + num_references]]
        _, expression, _, _ = Collection.factors_of(truth[template["path"]])
        identity_b, _, style_b, pose_b = Collection.factors_of(truth[styled_as["path"]])
        result = render(identity_b, expression, style_b, pose_b, size=collection.size)
        target = out_dir / "images" / f"{n:07d}.png"
        Image.fromarray(result.image).save(target)
        root = Path(collection_root).resolve()
        triplets.append(
            Triplet(
                template=str(root / template["path"]),
                references=[str(root / r["path"]) for r in refs],
                target=str(target.resolve()),
                prompt=make_caption(identity_b, expression, style_b, np.random.default_rng([seed, n, 13])),
                template_kps=template["kps"],
                reference_kps=[r["kps"] for r in refs],
                extra={"template_identity": template["identity"], "target_identity": styled_as["identity"]},
                target_kps=np.asarray(result.keypoints, dtype=np.float64).round(3).tolist(),
            )
        )
    return write_triplets(triplets, out_dir / "triplets.jsonl")
