"""Which base pipeline a result was measured on: a digest of a local pipeline folder's files.

An adapter only means something on the base it was trained on, and a pipeline folder can be replaced in place (the
synthetic world's shipped base is), so results and caches record the folder's content, not only its name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def folder_digest(folder: str | os.PathLike) -> str | None:
    """sha256 (16 hex digits) over the relative path and bytes of every file under `folder` (hidden files and
    folders skipped: a Hub cache's bookkeeping), or None when `folder` is empty or not a local folder (a Hub id).

    Reads every byte (about 5 s for an SDXL folder, milliseconds for the synthetic base)."""
    root = Path(folder).expanduser()
    if not str(folder) or not root.is_dir():  # "" would be the working directory
        return None
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def base_record(pretrained_model: str | os.PathLike) -> dict:
    """``{"pretrained_model": name or path, "digest": folder_digest or None}``: what results.json records as
    ``base_model``."""
    return {"pretrained_model": str(pretrained_model), "digest": folder_digest(pretrained_model)}
