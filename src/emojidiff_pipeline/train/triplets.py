"""Training triplets for stage 1: (expression template, identity reference(s), target, prompt).

Manifest format: JSON Lines, one triplet per line, paths relative to the manifest's folder (or absolute)::

    {"template": "images/id00012/03.png", "references": ["images/id00012/01.png", "images/id00012/05.png"],
     "target": "images/id00012/03.png", "prompt": "flat emoji portrait, pastel palette, smiling",
     "template_kps": [[x, y] x 5], "reference_kps": [[[x, y] x 5], ...], "target_identity": "id00012",
     "template_identity": "id00012"}

``template_kps`` / ``reference_kps`` / ``target_kps`` are optional known 5-point keypoints (insightface order);
without them the face front-end detects the face (``target_kps`` is only read by the face-weighted loss). The
``*_identity`` fields are optional and only used for bookkeeping (IDI logs).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .atomic import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class Triplet:
    """One stage-1 training example; paths are absolute."""

    template: str
    references: list[str]
    target: str
    prompt: str
    template_kps: list | None = None
    reference_kps: list | None = None
    extra: dict = field(default_factory=dict)
    target_kps: list | None = None

    def to_json(self, root: Path | None = None) -> dict:
        def rel(p):
            return os.path.relpath(p, root) if root is not None else p

        out = {
            "template": rel(self.template),
            "references": [rel(p) for p in self.references],
            "target": rel(self.target),
            "prompt": self.prompt,
        }
        if self.template_kps is not None:
            out["template_kps"] = self.template_kps
        if self.reference_kps is not None:
            out["reference_kps"] = self.reference_kps
        if self.target_kps is not None:
            out["target_kps"] = self.target_kps
        out.update(self.extra)
        return out


def _kps(value: Any, where: str) -> list:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (5, 2) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: keypoints must be 5 finite (x, y) pairs, got {value!r}.")
    return arr.tolist()


def iter_jsonl(
    path: str | os.PathLike, required: Sequence[str] = (), what: str = "manifest", allow_blank: bool = True
) -> Iterator[tuple[str, dict]]:
    """(``"file:line"``, record) for each non-blank line of a JSON Lines file, in order. Every error names the file
    and line: invalid UTF-8, invalid JSON, a line that is not an object, a record without a `required` field, and
    without `allow_blank` a blank line. The one reader of every JSONL manifest and collection (training's and the
    synthetic world's)."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} {str(path)!r} {state}.")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1}): {raw[:80]!r}"
                ) from err
            if not line.strip():
                if allow_blank:
                    continue
                raise ValueError(f"{where}: empty line.")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno}): {line[:80]!r}") from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
            missing = [k for k in required if k not in record]
            if missing:
                raise ValueError(
                    f"{where}: the record has no {', '.join(f'`{k}`' for k in missing)} field "
                    f"(it has {sorted(record)})."
                )
            yield where, record


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), what: str = "manifest") -> list[dict]:
    """The records of a JSON Lines file (see :func:`iter_jsonl`); a file without any is refused by its name."""
    records = [record for _, record in iter_jsonl(path, required, what)]
    if not records:
        raise ValueError(f"{what} {str(path)!r} holds no records (the file is empty).")
    return records


def open_rgb(path: str | os.PathLike, what: str = "image") -> PIL.Image.Image:
    """An image file fully decoded to RGB; a missing, truncated or non-image file is refused by its path."""
    try:
        with PIL.Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, PIL.UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read as an image: {err}") from err


COLLECTION_FIELDS = ("path", "identity", "caption")


def read_collection(path: str | os.PathLike, what: str = "collection manifest") -> list[dict]:
    """A collection manifest's records (``path``, ``identity``, ``caption``[, ``kps``]); errors give file:line."""
    records = []
    for where, record in iter_jsonl(path, COLLECTION_FIELDS, what):
        for key in ("path", "caption"):
            if not isinstance(record[key], str) or (key == "path" and not record[key]):
                raise ValueError(
                    f"{where}: `{key}` must be a {'non-empty ' if key == 'path' else ''}string, got {record[key]!r}."
                )
        records.append(record)
    if not records:
        raise ValueError(f"{what} {str(path)!r} holds no records (the file is empty).")
    return records


def unique_records(records: Sequence[dict], root: str | os.PathLike) -> list[dict]:
    """`records` without repeats of a photo (same resolved ``path``; the first is kept), logging how many were
    dropped. A photo listed under two identities is refused: its identity is unknown."""
    root = Path(root).resolve()
    first: dict[str, dict] = {}
    for n, r in enumerate(records):
        for key in ("path", "identity"):
            if key not in r:
                raise ValueError(f"collection record {n} has no `{key}` field (it has {sorted(r)}).")
        key = os.path.normpath(root / r["path"])
        if key in first and first[key]["identity"] != r["identity"]:
            raise ValueError(
                f"collection records list {r['path']!r} under two identities: "
                f"{first[key]['identity']!r} and {r['identity']!r} (record {n})."
            )
        first.setdefault(key, r)
    dropped = len(records) - len(first)
    if dropped:
        logger.warning("Dropped %d duplicate collection record(s) (a photo listed more than once).", dropped)
    return list(first.values())


def read_triplets(manifest: str | os.PathLike) -> list[Triplet]:
    """Read and validate a triplet manifest; errors name the file, the line and what is wrong."""
    manifest = Path(manifest)
    root = manifest.resolve().parent
    triplets = []
    for where, item in iter_jsonl(manifest, ("template", "references", "target", "prompt"), "`triplets` manifest"):
        refs = item["references"]
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"{where}: `references` must be a non-empty list of paths, got {refs!r}.")
        if not isinstance(item["prompt"], str):
            raise ValueError(f"{where}: `prompt` must be a string, got {item['prompt']!r}.")
        paths = [item["template"], *refs, item["target"]]
        resolved = [str((root / p).resolve()) for p in paths]
        absent = [p for p, r in zip(paths, resolved) if not os.path.isfile(r)]
        if absent:
            raise ValueError(f"{where}: image file(s) not found: {absent}.")
        template_kps = _kps(item["template_kps"], f"{where} `template_kps`") if "template_kps" in item else None
        reference_kps = None
        if "reference_kps" in item:
            if not isinstance(item["reference_kps"], list) or len(item["reference_kps"]) != len(refs):
                raise ValueError(f"{where}: `reference_kps` must hold one keypoint set per reference.")
            reference_kps = [_kps(k, f"{where} `reference_kps`") for k in item["reference_kps"]]
        target_kps = _kps(item["target_kps"], f"{where} `target_kps`") if "target_kps" in item else None
        known = {"template", "references", "target", "prompt", "template_kps", "reference_kps", "target_kps"}
        triplets.append(
            Triplet(
                resolved[0],
                resolved[1:-1],
                resolved[-1],
                item["prompt"],
                template_kps,
                reference_kps,
                {k: v for k, v in item.items() if k not in known},
                target_kps,
            )
        )
    if not triplets:
        raise ValueError(f"`triplets` manifest {str(manifest)!r} holds no triplets.")
    return triplets


def write_triplets(triplets: Iterable[Triplet], manifest: str | os.PathLike) -> Path:
    """Write a manifest atomically (temp file + rename), paths relative to its folder."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    root = manifest.resolve().parent
    with atomic_path(manifest) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for t in triplets:
            f.write(json.dumps(t.to_json(root)) + "\n")
    return manifest


def group_by_identity(records: Iterable[dict]) -> dict[str, list[dict]]:
    """Photo records by their ``identity``, identities in first-seen order and photos in record order; a record
    without ``identity`` or ``path`` is refused by its content."""
    by_identity: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if "identity" not in r or "path" not in r:
            raise ValueError(f"collection record {r!r} needs `identity` and `path` fields.")
        by_identity[r["identity"]].append(r)
    return dict(by_identity)


def same_identity_triplets(
    records: Sequence[dict], root: str | os.PathLike, num_references: int = 2, seed: int = 0
) -> list[Triplet]:
    """Round-0 data from any photo collection: the template is the target photo itself (its expression matches
    exactly), the references are other photos of the same person.

    Args:
        records: dicts with ``path`` (relative to `root`), ``identity``, ``caption`` and optionally ``kps``.
        num_references: references per triplet (identities with fewer other photos use what they have; identities
            with a single photo are skipped). Repeated records of a photo are dropped (:func:`unique_records`).
    """
    if num_references < 1:
        raise ValueError(f"`num_references` must be >= 1, got {num_references}.")
    root = Path(root).resolve()
    by_identity = group_by_identity(unique_records(records, root))
    rng = np.random.default_rng(seed)
    triplets = []
    for identity, photos in by_identity.items():
        if len(photos) < 2:
            continue
        for target in photos:
            target_path = os.path.normpath(root / target["path"])  # by path: a photo is never its own reference
            others = [p for p in photos if os.path.normpath(root / p["path"]) != target_path]
            chosen = [others[k] for k in rng.permutation(len(others))[:num_references]]
            kps_known = "kps" in target and all("kps" in p for p in chosen)
            triplets.append(
                Triplet(
                    template=str(root / target["path"]),
                    references=[str(root / p["path"]) for p in chosen],
                    target=str(root / target["path"]),
                    prompt=target["caption"],
                    template_kps=target["kps"] if kps_known else None,
                    reference_kps=[p["kps"] for p in chosen] if kps_known else None,
                    extra={"template_identity": identity, "target_identity": identity},
                )
            )
    return triplets


def strip_phrases(prompt: str, phrases: Iterable[str]) -> str:
    """`prompt` without its comma-separated parts that are one of `phrases` (case and spaces ignored)."""
    drop = {p.strip().lower() for p in phrases if p.strip()}
    return ",".join(part for part in prompt.split(",") if part.strip().lower() not in drop).strip()


def strip_prompt_phrases(triplets: Sequence[Triplet], phrases: Iterable[str]) -> list[Triplet]:
    """Drop the comma-separated parts of each prompt that are one of `phrases` (e.g. expression words, so training
    prompts match word-free inference prompts and the text cannot stand in for the expression branch)."""
    phrases = list(phrases)
    return [
        Triplet(
            t.template,
            t.references,
            t.target,
            strip_phrases(t.prompt, phrases),
            t.template_kps,
            t.reference_kps,
            t.extra,
            t.target_kps,
        )
        for t in triplets
    ]
