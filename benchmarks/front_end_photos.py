"""The face front-end on real packaged photos: detection, 5-point alignment, the expression crop and its mask.

    python benchmarks/front_end_photos.py --out docs/real_photos

For scikit-image's astronaut and matplotlib's Grace Hopper (and their mirror images): MediaPipe's face mesh and
dlib's HOG detector give boxes and 5 keypoints; the ArcFace crop (insightface's norm_crop) and the ``eyes_nose``
expression crop with its mask are cut at MediaPipe's keypoints, and the mesh's brow, chin and mouth points are
mapped into each crop to check the mask keeps them. Writes front_end.png (a picture to look at) and front_end.md/json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emojidiff_pipeline.face_geometry import (
    align_expression_face,
    arcface_template,
    expression_crop_matrix,
    expression_mask,
)
from emojidiff_pipeline.face_geometry import face_mask as arcface_mask

# face-mesh points the expression crop must keep: brow tops, the chin, the mouth corners and lips
REGIONS = {
    "brows": (70, 63, 105, 66, 107, 300, 293, 334, 296, 336),
    "chin": (152, 148, 176, 377, 400),
    "mouth": (61, 291, 0, 17, 13, 14),
}
SIZE = 224


def _arcface_matrix(kps: np.ndarray, size: int) -> np.ndarray:
    return expression_crop_matrix(kps, size, geometry="arcface")


def check_photo(image: np.ndarray, mesh_detector, dlib_detector) -> dict:
    """Detections, crops and, per region, the smallest mask value at its mesh points in each crop geometry."""
    landmarks = mesh_detector.landmarks(image)
    if len(landmarks) == 0:
        raise ValueError("MediaPipe's face mesh found no face in the photo.")
    mesh = landmarks[0][:, :2]
    (box, kps, _), *_ = mesh_detector(image)
    dlib_faces = dlib_detector(image)
    result = {"mesh_box": box, "kps": kps, "mesh": mesh, "dlib": dlib_faces}
    for geometry, mask in (("arcface", arcface_mask(SIZE)), ("eyes_nose", expression_mask(SIZE))):
        matrix = _arcface_matrix(kps, SIZE) if geometry == "arcface" else expression_crop_matrix(kps, SIZE)
        points = mesh @ matrix[:, :2].T + matrix[:, 2]  # (478, 2) in crop pixels
        kept = {}
        for region, ids in REGIONS.items():
            xy = np.round(points[list(ids)]).astype(int)
            inside = (xy >= 0).all(1) & (xy < SIZE).all(1)
            values = np.where(inside, mask[np.clip(xy[:, 1], 0, SIZE - 1), np.clip(xy[:, 0], 0, SIZE - 1)], 0.0)
            kept[region] = float(values.min())
        result[geometry] = {
            "crop": align_expression_face(image, kps, SIZE, geometry),
            "mask": mask,
            "points": points,
            "min_mask": kept,
        }
    return result


def _panel(result: dict, image: np.ndarray) -> Image.Image:
    """One row: the photo with both detectors' boxes and 5 points, the ArcFace crop, the expression crop, its mask."""
    scale = SIZE / max(image.shape[:2])
    photo = Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)))
    draw = ImageDraw.Draw(photo)
    for (box, kps, _), colour in [((result["mesh_box"], result["kps"], 1.0), (0, 255, 0))] + [
        (face, (255, 160, 0)) for face in result["dlib"]
    ]:
        draw.rectangle(list(np.asarray(box) * scale), outline=colour, width=2)
        for x, y in np.asarray(kps) * scale:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    row = Image.new("RGB", (4 * SIZE, SIZE), (255, 255, 255))
    row.paste(photo, (0, 0))
    for k, geometry in enumerate(("arcface", "eyes_nose")):
        crop = Image.fromarray(result[geometry]["crop"])
        draw = ImageDraw.Draw(crop)
        for ids, colour in (
            (REGIONS["brows"], (255, 0, 255)),
            (REGIONS["chin"], (0, 200, 255)),
            (REGIONS["mouth"], (255, 255, 0)),
        ):
            for x, y in result[geometry]["points"][list(ids)]:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        if geometry == "arcface":
            for x, y in arcface_template(SIZE):
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=(0, 255, 0))
        row.paste(crop, ((k + 1) * SIZE, 0))
    masked = result["eyes_nose"]["crop"] * result["eyes_nose"]["mask"][..., None] + 127.5 * (
        1 - result["eyes_nose"]["mask"][..., None]
    )
    row.paste(Image.fromarray(masked.round().astype(np.uint8)), (3 * SIZE, 0))
    return row


def main(argv: list[str] | None = None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from real_photo_set import packaged_photos

    from emojidiff_pipeline.face_models.dlib_models import DlibDetector
    from emojidiff_pipeline.face_models.mediapipe_mesh import MediaPipeDetector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/real_photos")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mesh_detector, dlib_detector = MediaPipeDetector(), DlibDetector()
    photos = {}
    for name, photo in packaged_photos().items():
        photos[name] = photo
        photos[f"{name}_mirror"] = np.ascontiguousarray(photo[:, ::-1])
    rows, report = [], {}
    for name, photo in photos.items():
        result = check_photo(photo, mesh_detector, dlib_detector)
        rows.append(_panel(result, photo))
        iod = float(np.linalg.norm(result["kps"][1] - result["kps"][0]))
        dlib_kps = result["dlib"][0][1] if result["dlib"] else None
        report[name] = {
            "mediapipe_kps": np.round(result["kps"], 1).tolist(),
            "dlib_faces": len(result["dlib"]),
            "dlib_vs_mediapipe_max_kps_gap_in_eye_distances": (
                None if dlib_kps is None else round(float(np.abs(dlib_kps - result["kps"]).max() / iod), 3)
            ),
            "min_mask_value": {
                g: {r: round(v, 3) for r, v in result[g]["min_mask"].items()} for g in ("arcface", "eyes_nose")
            },
        }
    sheet = Image.new("RGB", (4 * SIZE, len(rows) * SIZE), (255, 255, 255))
    for k, row in enumerate(rows):
        sheet.paste(row, (0, k * SIZE))
    sheet.save(out / "front_end.png")
    (out / "front_end.json").write_text(json.dumps(report, indent=1))
    command = "python benchmarks/front_end_photos.py" + (f" --out {args.out}" if argv else "")
    lines = [
        "# The face front-end on real packaged photos",
        "",
        f"Written by `{command}`.",
        "",
        "![front end](front_end.png)",
        "",
        "Each row: the photo with MediaPipe's box and 5 points (green) and dlib's (orange); the ArcFace crop "
        "(insightface norm_crop at MediaPipe's points; green rings: the template's 5 points); the `eyes_nose` "
        "expression crop; the masked crop the image stream sees. Dots: the face mesh's brows (magenta), chin "
        "(cyan) and mouth (yellow) mapped into each crop.",
        "",
        "Smallest mask value at each region's mesh points (1: fully kept, 0: outside the crop or masked off):",
        "",
        "| photo | dlib faces | dlib vs MediaPipe 5 points (max, eye distances) | arcface brows / chin / mouth "
        "| eyes_nose brows / chin / mouth |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in report.items():
        a, e = r["min_mask_value"]["arcface"], r["min_mask_value"]["eyes_nose"]
        lines.append(
            f"| {name} | {r['dlib_faces']} | {r['dlib_vs_mediapipe_max_kps_gap_in_eye_distances']} | "
            f"{a['brows']} / {a['chin']} / {a['mouth']} | {e['brows']} / {e['chin']} / {e['mouth']} |"
        )
    (out / "front_end.md").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
