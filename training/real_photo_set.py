"""A tiny real-photo evaluation set from photos that ship inside packages, for `evaluate.py --references/--templates`.

    python training/real_photo_set.py --out runs/real_photos

People: scikit-image's astronaut (smiling) and matplotlib's Grace Hopper (neutral), and their mirror images as two
pseudo-identities (the same two faces flipped: good enough to exercise leakage against "strangers", not a real
identity benchmark). Each person's folder under ``references/`` holds the photo and a tighter crop of it (the
second photo gives the same-person line); ``templates/<person>.png`` is the full photo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# face-centred square crops (y0, y1, x0, x1) of the two photos, from their dlib / MediaPipe face boxes
_CROPS = {"astronaut": (0, 300, 80, 380), "hopper": (60, 420, 90, 450)}


def packaged_photos() -> dict[str, np.ndarray]:
    """{"astronaut": (512, 512, 3), "hopper": (600, 512, 3)} uint8 RGB, read from scikit-image and matplotlib."""
    import skimage.data
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        hopper = np.asarray(image.convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "hopper": hopper}


PEOPLE = ("astronaut", "astronaut_mirror", "hopper", "hopper_mirror")


def write_real_photo_set(out: str | Path, size: int = 256, people: tuple[str, ...] = PEOPLE) -> tuple[Path, Path]:
    """Write ``<out>/references/<person>/{0,1}.png`` (the photo, a `size` px face crop) and
    ``<out>/templates/<person>.png`` for `people` (a subset of :data:`PEOPLE`); returns both folders."""
    unknown = sorted(set(people) - set(PEOPLE))
    if unknown:
        raise ValueError(f"`people` must be names from {PEOPLE}, got {unknown}.")
    out = Path(out)
    photos = {}
    for name, photo in packaged_photos().items():
        y0, y1, x0, x1 = _CROPS[name]
        photos[name] = photo
        photos[f"{name}_mirror"] = np.ascontiguousarray(photo[:, ::-1])
        crop = photo[y0:y1, x0:x1]
        photos[f"{name}_crop"] = crop
        photos[f"{name}_mirror_crop"] = np.ascontiguousarray(crop[:, ::-1])
    for person in people:
        folder = out / "references" / person
        folder.mkdir(parents=True, exist_ok=True)
        full = Image.fromarray(photos[person])
        full.save(folder / "0.png")
        Image.fromarray(photos[f"{person}_crop"]).resize((size, size), Image.LANCZOS).save(folder / "1.png")
        (out / "templates").mkdir(parents=True, exist_ok=True)
        full.save(out / "templates" / f"{person}.png")
    return out / "references", out / "templates"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    references, templates = write_real_photo_set(parser.parse_args().out)
    print(f"wrote {references} and {templates}")
