"""One split of the photo collection in memory, as the base model's trainers read it (never the renderer)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass
class CollectionData:
    """One split of the collection in memory.

    Attributes:
        images: (N, S, S, 3) uint8 RGB.
        captions: N captions.
        identities: N identity names.
        kps: (N, 5, 2) float32 keypoints (insightface order, pixel coordinates).
        paths: N collection-relative image paths.
        fingerprint: a hash of the manifest (invalidates caches when the collection changes).
    """

    images: np.ndarray
    captions: list[str]
    identities: list[str]
    kps: np.ndarray
    paths: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.captions)


def load_collection_split(root: str | os.PathLike, split: str = "train", limit: int | None = None) -> CollectionData:
    """Read a split of a photo collection through :class:`~emojidiff_synthetic.collection.Collection`."""
    from ..collection import Collection

    collection = Collection(root)
    records = collection.records(split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"The {split!r} split of the collection at {str(root)!r} is empty.")
    images = np.stack([collection.load_image(r) for r in records])
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode())
    return CollectionData(
        images=images,
        captions=[r["caption"] for r in records],
        identities=[r["identity"] for r in records],
        kps=np.asarray([r["kps"] for r in records], dtype=np.float32),
        paths=[r["path"] for r in records],
        fingerprint=h.hexdigest()[:16],
    )


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
