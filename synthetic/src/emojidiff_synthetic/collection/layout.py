"""The collection's on-disk format: file names, record fields, keypoint order, limits and the seed stream tags
(see the package docstring)."""

from __future__ import annotations

import re

FORMAT_NAME = "emojidiff-photo-collection"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "heldout")
KEYPOINT_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner")
RECORD_FIELDS: tuple[str, ...] = ("path", "identity", "caption", "kps")
GROUND_TRUTH_FIELDS: tuple[str, ...] = (
    "path",
    "identity",
    "identity_seed",
    "identity_factors",
    "expression",
    "style",
    "pose",
)
MAX_IDENTITIES = 100_000  # identity names stay 5 digits wide, so sorting by name sorts by id
MAX_PHOTOS_PER_IDENTITY = 99  # photo file names are 2 digits wide
DEFAULT_SHARD_SIZE = 100

# Stream tags (last SeedSequence word, non-zero: see the module docstring).
PHOTO_STREAM = 1
CAPTION_STREAM = 2

MANIFESTS = {"train": "train.jsonl", "heldout": "heldout.jsonl"}
GROUND_TRUTH = "ground_truth.jsonl"
METADATA = "collection.json"
BUILD_DIR = ".build"
IDENTITY_RE = re.compile(r"^id(\d{5})$")
PATH_RE = re.compile(r"^images/(id\d{5})/(\d{2})\.png$")
