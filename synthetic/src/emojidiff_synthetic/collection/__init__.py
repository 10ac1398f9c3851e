"""The photo collection of the synthetic proving ground (DESIGN.md): build it once, then read it like real data.

The collection obeys the real-data constraint: many identities, several photos of each (random expression, style
and pose), images as files, web-like captions (style and coarse appearance, coarse expression words at most) and
the five keypoints a face detector would return. Method code (training, IDI) reads only this collection, never the
renderer. The renderer's factors are written to a separate ground-truth file that only evaluation and instrument
training read. Identities with `world.is_held_out(i)` go to their own manifest and to no training file.

Layout under the root:

    collection.json          metadata: sizes, seed, counts per split, field orders, format version
    train.jsonl              {"path", "identity", "caption", "kps"} per photo of a non-held-out identity
    heldout.jsonl            the same fields for held-out identities (evaluation only)
    ground_truth.jsonl       {"path", "identity", "identity_seed", "identity_factors", "expression", "style", "pose"}
                             for every photo (evaluation and instrument training only)
    images/<identity>/<photo:02d>.png
    .build/                  only while building: build config, committed shards, temporary files

Determinism: identity `i` is `Identity.from_seed(i)` (world.py) and photo `j` of it is drawn from
`np.random.default_rng([seed, i, j, 1])` (expression, then style, then pose; the caption's wording from
`[seed, i, j, 2]`), so the files depend on (num_identities, photos_per_identity, size, seed) only: not on the number
of workers, the shard size or on how often a build was interrupted. The last, non-zero word is a stream tag:
numpy's SeedSequence ignores trailing zero words, so `[seed, i, 0]` would give the very stream of
`Identity.from_seed(seed)` (photo 0 of identity 0 would copy identity `seed`'s factors).

Crash safety: identities are built in shards. A shard writes its images (each through a temporary file and
`os.replace`), then its manifest lines to a temporary file that is renamed into `.build/shards/` (the commit). A
restart keeps committed shards and rebuilds the others; the final files are assembled from the shards, each
written whole and renamed into place, `collection.json` last. A SIGKILL at any moment followed by a restart gives
the same bytes as an uninterrupted build.

numpy + Pillow only: importing this package never imports torch.

Modules: ``layout`` (file names, fields, limits), ``captions``, ``build`` (`build_collection`), ``reader``
(`Collection`).
"""

from .build import BuildReport, build_collection, check_build_args
from .captions import EXPRESSION_WORDS, make_caption
from .layout import DEFAULT_SHARD_SIZE, FORMAT_NAME, FORMAT_VERSION, KEYPOINT_NAMES, SPLITS
from .reader import Collection

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "EXPRESSION_WORDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KEYPOINT_NAMES",
    "SPLITS",
    "BuildReport",
    "Collection",
    "build_collection",
    "check_build_args",
    "make_caption",
]
