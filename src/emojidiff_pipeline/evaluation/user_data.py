"""Evaluation cases from a user's folders: ``--references`` (one subfolder of photos per person) and
``--templates`` (expression templates; a template's person is its subfolder's name or its file stem)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .scores import Case

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _folder(path: str, arg: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{arg}: {folder} {'is not a folder' if folder.exists() else 'does not exist'}.")
    return folder


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image(path: Path, arg: str) -> np.ndarray:
    """An image file -> RGB uint8 (H, W, 3) (EXIF orientation applied); errors name `arg` and the path."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{arg}: could not open image {path}: {err}") from err


def user_cases(references: str, templates: str, prompts: list[str]):
    """Cases (every reference person x every template of another person, prompts in turn) and same-person pairs
    (the first two images of each person with two or more) from the --references / --templates folders."""
    ref_root, tpl_root = _folder(references, "--references"), _folder(templates, "--templates")
    people = _subfolders(ref_root)
    if not people:
        raise ValueError(
            f"--references: {ref_root} holds no person subfolders (expected one subfolder of images "
            f"per person, e.g. {ref_root / 'alice' / '0.png'})."
        )
    refs, pairs = {}, []
    for folder in people:
        files = _images_in(folder)
        if not files:
            raise ValueError(f"--references: no images ({'/'.join(IMAGE_SUFFIXES)}) in {folder}.")
        first = [load_image(f, "--references") for f in files[:2]]
        refs[folder.name] = first[0]
        if len(first) == 2:
            pairs.append((first[0], first[1], None, None))
    # a template's person: its subfolder's name, or for an image directly in the folder its file stem
    tpl_files = [(f.stem, f) for f in _images_in(tpl_root)]
    tpl_files += [(folder.name, f) for folder in _subfolders(tpl_root) for f in _images_in(folder)]
    if not tpl_files:
        raise ValueError(f"--templates: no images ({'/'.join(IMAGE_SUFFIXES)}) in {tpl_root} or its subfolders.")
    tpls = [(person, load_image(f, "--templates")) for person, f in tpl_files]
    cases = []
    for ref_person, ref in refs.items():
        for tpl_person, tpl in tpls:
            if tpl_person != ref_person:
                cases.append(Case(ref, tpl, prompts[len(cases) % len(prompts)], ref_person, tpl_person))
    if not cases:
        raise ValueError(
            f"--templates: every template in {tpl_root} belongs to a person under --references "
            f"({ref_root}); cases need a template of another person."
        )
    logger.info(
        "%d reference people x %d templates -> %d cases, %d same-person pairs",
        len(refs),
        len(tpls),
        len(cases),
        len(pairs),
    )
    return cases, pairs, f"{len(refs)} reference people x {len(tpls)} templates (other people's): {len(cases)} cases"
