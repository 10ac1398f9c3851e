"""Renders with known factors for training and evaluating the instruments (never the collection's identities in
training: those are the held-out ones, for evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..renderer import EXPRESSION_FIELDS, HAIR_STYLES, STYLE_CHOICES, Expression, Identity, Pose, Style, render
from ..world import DEFAULT_NUM_IDENTITIES, is_held_out
from .networks import STYLE_HEADS
from .preprocess import FACE_SIZE, STYLE_IMAGE_SIZE

# Ground-truth identity factors the identity encoders regress as an auxiliary task (hair style is a class).
IDENTITY_FACTOR_FIELDS: tuple[str, ...] = (
    "face_width",
    "face_height",
    "jaw",
    "skin_tone",
    "hair_color",
    "eye_shape",
    "eye_size",
    "eye_spacing",
    "iris_color",
    "nose_size",
    "ear_size",
    "brow_thickness",
    "mouth_width",
    "freckles",
    "glasses",
)


def identity_factor_targets(identity: Identity) -> tuple[np.ndarray, int]:
    """Auxiliary targets of an identity: (len(IDENTITY_FACTOR_FIELDS),) float32 in [0, 1] and the hair-style index."""
    values = np.array([float(getattr(identity, n)) for n in IDENTITY_FACTOR_FIELDS], dtype=np.float32)
    return values, HAIR_STYLES.index(identity.hair_style)


def held_out_identity_ids(num_identities: int = DEFAULT_NUM_IDENTITIES) -> list[int]:
    """The collection's held-out identity ids (``world.is_held_out``) below `num_identities`."""
    return [i for i in range(num_identities) if is_held_out(i)]


class RenderSet(dict):
    """Arrays of a rendered set (a dict): ``images`` (N, 64, 64, 3) uint8, ``keypoints`` (N, 5, 2), ``faces``
    (N, 112, 112, 3) uint8 aligned crops, ``label`` (N,) identity index in the set, ``identity_seed`` (N,),
    ``expression`` (N, 11), ``style`` (N, 4) indices in ``STYLE_HEADS`` order, ``identity_factors`` (N, 15) and
    ``hair_style`` (N,)."""


def render_set(
    identity_seeds: Sequence[int],
    photos_per_identity: int,
    seed: int,
    size: int = STYLE_IMAGE_SIZE,
    keypoint_jitter: float = 0.0,
) -> RenderSet:
    """Render `photos_per_identity` photos of each identity ``Identity.from_seed(s)`` with random expression, style
    and pose (``Expression.random``, ``Style.random``, ``Pose.random``) drawn from ``np.random.default_rng(seed)``.

    `keypoint_jitter`: std (pixels) of Gaussian noise on the keypoints used for the aligned crops (augmentation; the
    stored ``keypoints`` stay exact).
    """
    rng = np.random.default_rng(seed)
    n = len(identity_seeds) * photos_per_identity
    out = RenderSet(
        images=np.empty((n, size, size, 3), np.uint8),
        keypoints=np.empty((n, 5, 2), np.float32),
        faces=np.empty((n, FACE_SIZE, FACE_SIZE, 3), np.uint8),
        label=np.empty(n, np.int64),
        identity_seed=np.empty(n, np.int64),
        expression=np.empty((n, len(EXPRESSION_FIELDS)), np.float32),
        style=np.empty((n, len(STYLE_HEADS)), np.int64),
        identity_factors=np.empty((n, len(IDENTITY_FACTOR_FIELDS)), np.float32),
        hair_style=np.empty(n, np.int64),
    )
    from emojidiff_pipeline.face_geometry import align_face

    k = 0
    for label, id_seed in enumerate(identity_seeds):
        identity = Identity.from_seed(int(id_seed))
        factors, hair = identity_factor_targets(identity)
        for _ in range(photos_per_identity):
            expression, style, pose = Expression.random(rng), Style.random(rng), Pose.random(rng)
            r = render(identity, expression, style, pose, size=size)
            kps = r.keypoints
            if keypoint_jitter > 0:
                kps = kps + rng.normal(0.0, keypoint_jitter, kps.shape).astype(np.float32)
            out["images"][k] = r.image
            out["keypoints"][k] = r.keypoints
            out["faces"][k] = align_face(r.image, kps, FACE_SIZE)
            out["label"][k] = label
            out["identity_seed"][k] = int(id_seed)
            out["expression"][k] = expression.to_vector()
            out["style"][k] = [STYLE_CHOICES[h].index(getattr(style, h)) for h in STYLE_HEADS]
            out["identity_factors"][k] = factors
            out["hair_style"][k] = hair
            k += 1
    return out
