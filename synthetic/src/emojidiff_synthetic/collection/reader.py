"""Reading a finished collection, every manifest line validated (the only way method code sees the synthetic
world)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..renderer import (
    EXPRESSION_FIELDS,
    Expression,
    Identity,
    Pose,
    Style,
)
from ..world import is_held_out
from .layout import (
    BUILD_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    GROUND_TRUTH,
    GROUND_TRUTH_FIELDS,
    IDENTITY_RE,
    KEYPOINT_NAMES,
    MANIFESTS,
    METADATA,
    PATH_RE,
    RECORD_FIELDS,
    SPLITS,
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Collection:
    """Read a finished photo collection (the only way method code sees the synthetic world).

    Args:
        root: the folder written by `build_collection` / `synthetic/scripts/build_collection.py`.

    Every manifest line is validated on reading; a bad line raises a ValueError naming the file, the line number
    and what is wrong.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta_path = self.root / METADATA
        if not meta_path.is_file():
            hint = (
                " (an unfinished build: run the builder again to finish it)"
                if (self.root / BUILD_DIR).exists()
                else ""
            )
            raise FileNotFoundError(
                f"{meta_path} not found: {str(self.root)!r} is not a finished photo collection{hint}. Build one with "
                "`python synthetic/scripts/build_collection.py --out <folder>`."
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: not valid JSON ({e}).") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{meta_path}: not a photo collection (`format` is not {FORMAT_NAME!r}).")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: collection format version {meta.get('version')!r}; this reader reads version "
                f"{FORMAT_VERSION}. Rebuild the collection."
            )
        for key in ("num_identities", "photos_per_identity", "size", "seed", "counts"):
            if key not in meta:
                raise ValueError(f"{meta_path}: missing `{key}`.")
        self.metadata: dict[str, Any] = meta

    @property
    def num_identities(self) -> int:
        return int(self.metadata["num_identities"])

    @property
    def photos_per_identity(self) -> int:
        return int(self.metadata["photos_per_identity"])

    @property
    def size(self) -> int:
        return int(self.metadata["size"])

    def __repr__(self) -> str:
        c = self.metadata["counts"]
        return (
            f"Collection({str(self.root)!r}, train={c['train']['photos']} photos of {c['train']['identities']} "
            f"identities, heldout={c['heldout']['photos']} photos of {c['heldout']['identities']} identities, "
            f"size={self.size})"
        )

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        return split

    def _lines(self, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """("file:line", record) of the collection file `name`, read by the library's one JSONL reader (blank lines
        are errors: the builder writes none)."""
        from emojidiff_pipeline.train.triplets import iter_jsonl

        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the collection at {str(self.root)!r} is incomplete.")
        return iter_jsonl(path, what=f"collection file {name!r}", allow_blank=False)

    def _check_path_identity(self, obj: dict[str, Any], split: str | None) -> str | None:
        """Return what is wrong with the "path" / "identity" pair of a line, or None."""
        name, rel = obj["identity"], obj["path"]
        if not isinstance(name, str) or not IDENTITY_RE.match(name):
            return f"`identity` must be a name like 'id00012', got {name!r}"
        if not isinstance(rel, str) or not (m := PATH_RE.match(rel)):
            return f"`path` must be 'images/<identity>/<photo:02d>.png', got {rel!r}"
        if m.group(1) != name:
            return f"`path` {rel!r} is not in the folder of identity {name!r}"
        if int(m.group(2)) >= self.photos_per_identity:
            return f"`path` {rel!r}: photo index >= photos_per_identity ({self.photos_per_identity})"
        i = int(name[2:])
        if i >= self.num_identities:
            return f"identity {name!r} is not below num_identities ({self.num_identities})"
        if split is not None and is_held_out(i) != (split == "heldout"):
            what = "a held-out identity" if is_held_out(i) else "a training identity"
            return f"identity {name!r} is {what} and may not appear in the {split!r} manifest"
        return None

    def records(self, split: str = "train") -> list[dict[str, Any]]:
        """The manifest of `split` ("train" for method code; "heldout" for evaluation only) as a list of
        {"path", "identity", "caption", "kps"} dicts, in identity then photo order. Paths are relative to the root."""
        name = MANIFESTS[self._check_split(split)]
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for where, obj in self._lines(name):
            problem = None
            if sorted(obj) != sorted(RECORD_FIELDS):
                missing = [k for k in RECORD_FIELDS if k not in obj]
                extra = sorted(k for k in obj if k not in RECORD_FIELDS)
                problem = f"fields must be {list(RECORD_FIELDS)} (missing {missing}, unexpected {extra})"
            else:
                problem = self._check_path_identity(obj, split)
            if problem is None:
                caption, kps = obj["caption"], obj["kps"]
                if not isinstance(caption, str) or not caption.strip():
                    problem = f"`caption` must be a non-empty string, got {caption!r}"
                elif (
                    not isinstance(kps, list)
                    or len(kps) != len(KEYPOINT_NAMES)
                    or not all(isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in kps)
                ):
                    problem = f"`kps` must be {len(KEYPOINT_NAMES)} [x, y] pairs of finite numbers, got {kps!r}"
                elif obj["path"] in seen:
                    problem = f"duplicate `path` {obj['path']!r}"
            if problem is not None:
                raise ValueError(f"{where}: {problem}.")
            seen.add(obj["path"])
            out.append(obj)
        self._check_count(name, len(out), self.metadata["counts"][split]["photos"])
        return out

    def _check_count(self, name: str, found: int, expected: int) -> None:
        if found != expected:
            raise ValueError(
                f"{self.root / name}: {found} lines, but {METADATA} says {expected} (truncated or edited file?)."
            )

    def identities(self, split: str = "train") -> list[str]:
        """Sorted identity names of `split`."""
        return sorted({r["identity"] for r in self.records(split)})

    def ground_truth(self) -> list[dict[str, Any]]:
        """The renderer's factors of every photo (both splits). EVALUATION AND INSTRUMENT TRAINING ONLY: method code
        (training, IDI) must not read this.

        Each entry: {"path", "identity", "identity_seed", "identity_factors": {IDENTITY_FIELDS...},
        "expression": [floats in EXPRESSION_FIELDS order], "style": {...}, "pose": {...}}; see `factors_of`.
        """
        out: list[dict[str, Any]] = []
        for where, obj in self._lines(GROUND_TRUTH):
            problem = None
            if sorted(obj) != sorted(GROUND_TRUTH_FIELDS):
                missing = [k for k in GROUND_TRUTH_FIELDS if k not in obj]
                extra = sorted(k for k in obj if k not in GROUND_TRUTH_FIELDS)
                problem = f"fields must be {list(GROUND_TRUTH_FIELDS)} (missing {missing}, unexpected {extra})"
            else:
                problem = self._check_path_identity(obj, None)
            if problem is None:
                if obj["identity_seed"] != int(obj["identity"][2:]):
                    problem = f"`identity_seed` {obj['identity_seed']!r} does not match identity {obj['identity']!r}"
                else:
                    try:
                        self.factors_of(obj)
                    except (TypeError, ValueError) as e:
                        problem = f"invalid factors ({e})"
            if problem is not None:
                raise ValueError(f"{where}: {problem}.")
            out.append(obj)
        self._check_count(GROUND_TRUTH, len(out), self.num_identities * self.photos_per_identity)
        return out

    @staticmethod
    def factors_of(entry: dict[str, Any]) -> tuple[Identity, Expression, Style, Pose]:
        """The renderer dataclasses of one `ground_truth()` entry (evaluation and instrument training only)."""
        if not isinstance(entry.get("identity_factors"), dict):
            raise ValueError("`identity_factors` must be an object")
        if not isinstance(entry.get("style"), dict) or not isinstance(entry.get("pose"), dict):
            raise ValueError("`style` and `pose` must be objects")
        expression = entry.get("expression")
        if not isinstance(expression, list) or not all(_is_number(v) for v in expression):
            raise ValueError(f"`expression` must be a list of {len(EXPRESSION_FIELDS)} numbers")
        return (
            Identity(**entry["identity_factors"]),
            Expression.from_vector(expression),
            Style(**entry["style"]),
            Pose(**entry["pose"]),
        )

    def image_path(self, record: dict[str, Any]) -> Path:
        """Absolute path of a record's image (the record's `path` is checked to be a collection image path)."""
        rel = record.get("path") if isinstance(record, dict) else None
        if not isinstance(rel, str) or not PATH_RE.match(rel):
            raise ValueError(f"`record['path']` must be 'images/<identity>/<photo:02d>.png', got {rel!r}.")
        return self.root / rel

    def load_image(self, record: dict[str, Any]) -> np.ndarray:
        """The record's image as np.uint8 of shape (size, size, 3)."""
        path = self.image_path(record)
        with Image.open(path) as im:
            if im.mode != "RGB" or im.size != (self.size, self.size):
                raise ValueError(f"{path}: expected a {self.size}x{self.size} RGB image, got {im.size} {im.mode}.")
            return np.asarray(im, dtype=np.uint8).copy()
