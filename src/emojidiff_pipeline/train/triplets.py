"""Training triplets for stage 1: (expression template, identity reference(s), target, prompt).

Manifest format: JSON Lines, one triplet per line, paths relative to the manifest's folder (or absolute)::

    {"template": "images/id00012/03.png", "references": ["images/id00012/01.png", "images/id00012/05.png"],
     "target": "images/id00012/03.png", "prompt": "flat emoji portrait, pastel palette, smiling",
     "template_kps": [[x, y] x 5], "reference_kps": [[[x, y] x 5], ...], "target_identity": "id00012",
     "template_identity": "id00012"}

``template_kps`` / ``reference_kps`` / ``target_kps`` are optional known 5-point keypoints (insightface order);
without them the face front-end detects the face (``target_kps`` is only read by the face-weighted loss). The ``*_identity`` fields are optional and only used for bookkeeping (IDI logs).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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

        out = {"template": rel(self.template), "references": [rel(p) for p in self.references],
               "target": rel(self.target), "prompt": self.prompt}  # fmt: skip
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


def read_triplets(manifest: str | os.PathLike) -> list[Triplet]:
    """Read and validate a triplet manifest; errors name the file, the line and what is wrong."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"`triplets` manifest {str(manifest)!r} does not exist.")
    root = manifest.resolve().parent
    triplets = []
    with open(manifest, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg}): {line[:80]!r}") from err
            if not isinstance(item, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}.")
            missing = [k for k in ("template", "references", "target", "prompt") if k not in item]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}.")
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
                Triplet(resolved[0], resolved[1:-1], resolved[-1], item["prompt"], template_kps, reference_kps,
                        {k: v for k, v in item.items() if k not in known}, target_kps)
            )  # fmt: skip
    if not triplets:
        raise ValueError(f"`triplets` manifest {str(manifest)!r} holds no triplets.")
    return triplets


def write_triplets(triplets: Iterable[Triplet], manifest: str | os.PathLike) -> Path:
    """Write a manifest atomically (temp file + rename), paths relative to its folder."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    root = manifest.resolve().parent
    tmp = manifest.with_suffix(manifest.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in triplets:
            f.write(json.dumps(t.to_json(root)) + "\n")
    os.replace(tmp, manifest)
    return manifest


def same_identity_triplets(
    records: Sequence[dict], root: str | os.PathLike, num_references: int = 2, seed: int = 0
) -> list[Triplet]:
    """Round-0 data from any photo collection: the template is the target photo itself (its expression matches
    exactly), the references are other photos of the same person.

    Args:
        records: dicts with ``path`` (relative to `root`), ``identity``, ``caption`` and optionally ``kps``.
        num_references: references per triplet (identities with fewer other photos use what they have; identities
            with a single photo are skipped).
    """
    if num_references < 1:
        raise ValueError(f"`num_references` must be >= 1, got {num_references}.")
    root = Path(root).resolve()
    by_identity: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_identity[r["identity"]].append(r)
    rng = np.random.default_rng(seed)
    triplets = []
    for identity, photos in by_identity.items():
        if len(photos) < 2:
            continue
        for i, target in enumerate(photos):
            others = [p for j, p in enumerate(photos) if j != i]
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


def strip_prompt_phrases(triplets: Sequence[Triplet], phrases: Iterable[str]) -> list[Triplet]:
    """Drop the comma-separated parts of each prompt that are one of `phrases` (e.g. expression words, so training
    prompts match word-free inference prompts and the text cannot stand in for the expression branch)."""
    drop = {p.strip().lower() for p in phrases if p.strip()}

    def strip(prompt: str) -> str:
        return ",".join(part for part in prompt.split(",") if part.strip().lower() not in drop).strip()

    return [Triplet(t.template, t.references, t.target, strip(t.prompt), t.template_kps, t.reference_kps, t.extra,
                    t.target_kps) for t in triplets]  # fmt: skip
