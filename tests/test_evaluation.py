"""Evaluation metrics behave as defined on images whose answer is known."""

import json

import numpy as np
import pytest
from face_standins import make_arcface_standin
from idi_standins import colour_scorer, fixed_detector

from emojidiff_pipeline.evaluation import Case, Instruments, same_person_similarity, score_row, write_report
from emojidiff_pipeline.face import FaceAnalyzer
from emojidiff_synthetic import Expression, Identity, Pose, Style, render


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    onnx = make_arcface_standin(tmp_path_factory.mktemp("eval") / "arcface.onnx", seed=3)
    face = FaceAnalyzer.from_models(fixed_detector(), recognizer=onnx)
    people = {}
    for i in range(4):
        style = Style(
            rendering="flat", palette="natural", background=["blue", "pink", "teal", "gray"][i], pattern="plain"
        )
        people[f"p{i}"] = render(Identity.from_seed(100 + i), Expression(smile=0.2 * i), style, Pose())
    cases = [
        Case(
            reference=people["p0"].image,
            template=people[t].image,
            prompt="prompt",
            reference_person="p0",
            template_person=t,
            prompt_style={"background": "yellow"},
            template_style={"background": ["blue", "pink", "teal", "gray"][int(t[1])]},
        )
        for t in ("p1", "p2", "p3")
    ]
    style_fn = lambda images: {"background": ["teal" if im[0, 0, 2] > 150 else "other" for im in images]}  # noqa: E731
    return face, cases, people, Instruments(face, colour_scorer(), style_fn)


def test_copying_the_reference_scores_perfect_identity(setup):
    face, cases, people, inst = setup
    row = score_row([c.reference for c in cases], cases, inst)
    assert row["identity_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert row["no_face_rate"] == 0.0 and row["num_cases"] == 3


def test_copying_the_template_leaks_identity_and_matches_expression(setup):
    face, cases, people, inst = setup
    copied = score_row([c.template for c in cases], cases, inst)
    reference = score_row([c.reference for c in cases], cases, inst)
    assert copied["expression_error"] == pytest.approx(0.0, abs=1e-6)
    assert copied["identity_leakage"] > reference["identity_leakage"] + 0.1
    # its standard error over template persons, so a leakage difference between rows can be weighed
    assert 0 < copied["identity_leakage_se"] < copied["identity_leakage"]
    per_template = copied["identity_leakage_per_template"]
    assert set(per_template) == {c.template_person for c in cases}
    assert np.mean(list(per_template.values())) == pytest.approx(copied["identity_leakage"])  # one case each here
    for name in ("expression_error", "identity_similarity"):  # the other per-template means, for paired rows
        assert set(copied[f"{name}_per_template"]) == set(per_template)
        assert np.mean(list(copied[f"{name}_per_template"].values())) == pytest.approx(copied[name])
    # the teal template's style shows up where the prompt asked for yellow: 1 of 3 cases leaks
    assert copied["style_leakage"] == pytest.approx(1 / 3)


def test_an_unread_expression_drops_only_that_case_from_the_expression_scores(setup):
    face, cases, people, inst = setup
    scorer = colour_scorer()

    def blind_on_the_first(images, kps):  # NaN where it finds no face: the first generated image here
        out = scorer(images, kps)
        out[0] = np.nan
        return out

    generated = [c.template for c in cases]
    full = score_row(generated, cases, inst)
    row = score_row(generated, cases, Instruments(face, blind_on_the_first, inst.style))
    assert row["expression_unread_rate"] == pytest.approx(1 / 3)
    assert set(row["expression_error_per_template"]) == {"p2", "p3"}
    # sharpness does not need the expression: all three faces, grouped by their own templates
    assert row["face_sharpness"] == full["face_sharpness"] and row["face_sharpness_se"] == full["face_sharpness_se"]


def test_paired_difference_removes_the_groups_own_spread():
    from emojidiff_pipeline.evaluation import paired_difference

    a = {"t0": 0.0, "t1": 1.0, "t2": 2.0, "t3": 3.0}  # templates differ a lot ...
    b = {"t0": 0.1, "t1": 1.1, "t2": 2.0, "t3": 3.2, "only_b": 9.0}  # ... the rows little
    mean, se, n = paired_difference(a, b)
    assert n == 4 and mean == pytest.approx(-0.1) and se == pytest.approx(np.std([-0.1, -0.1, 0, -0.2], ddof=1) / 2)
    with pytest.raises(ValueError, match=">= 2 shared groups"):
        paired_difference({"t0": 1.0}, {"t0": 2.0, "t1": 0.0})


def test_no_face_is_counted_and_report_is_written(setup, tmp_path):
    face, cases, people, inst = setup
    blank = FaceAnalyzer.from_models(lambda image: [], recognizer=face.recognizer)
    row = score_row([c.reference for c in cases], cases, Instruments(blank, colour_scorer()))
    assert row["no_face_rate"] == 1.0 and np.isnan(row["identity_similarity"])
    pairs = [(people["p0"].image, people["p0"].image, None, None)]
    assert same_person_similarity(pairs, face) == pytest.approx(1.0, abs=1e-5)
    md = write_report(
        {"copy": score_row([c.reference for c in cases], cases, inst)},
        {"note": 1, "base_model": {"pretrained_model": "b", "digest": "d"}},
        tmp_path,
        "cmd",
        "T",
    )
    assert "| copy |" in md.read_text() and json.loads((tmp_path / "results.json").read_text())["command"] == "cmd"
    assert "- base_model: pretrained_model b, digest d" in md.read_text()


def test_folder_digest_follows_the_content_not_the_place(tmp_path):
    """A copy digests the same, any changed byte or renamed file differently; hidden bookkeeping (a Hub cache's
    .cache/) is skipped; a name that is no local folder (a Hub id) has none."""
    import shutil

    from emojidiff_pipeline.evaluation import base_record, folder_digest

    (tmp_path / "a" / "unet").mkdir(parents=True)
    (tmp_path / "a" / "model_index.json").write_text("{}")
    (tmp_path / "a" / "unet" / "w.safetensors").write_bytes(b"weights")
    digest = folder_digest(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "x").write_text("lock")
    assert folder_digest(tmp_path / "b") == digest
    (tmp_path / "b" / "unet" / "w.safetensors").write_bytes(b"weighty")
    assert folder_digest(tmp_path / "b") != digest
    (tmp_path / "b" / "unet" / "w.safetensors").rename(tmp_path / "b" / "unet" / "v.safetensors")
    (tmp_path / "b" / "unet" / "v.safetensors").write_bytes(b"weights")
    assert folder_digest(tmp_path / "b") != digest
    assert base_record("owner/sdxl") == {"pretrained_model": "owner/sdxl", "digest": None}
    assert folder_digest("") is None  # not the working directory


def test_ridge_probe_reads_a_linear_signal_on_held_out_groups():
    from emojidiff_pipeline.evaluation import ridge_probe

    rng = np.random.default_rng(0)
    groups = np.repeat([f"id{i}" for i in range(40)], 10)
    y = rng.uniform(0, 1, size=(400, 3))
    identity = rng.normal(size=(40, 50)).repeat(10, axis=0) * 3  # a strong per-identity nuisance
    x = np.concatenate([y @ rng.normal(size=(3, 20)), identity], axis=1) + rng.normal(size=(400, 70)) * 0.05
    out = ridge_probe(x, y, groups, seed=0)
    assert out["probe_mae"] < 0.33 * out["mean_predictor_mae"]  # far below the trivial answer
    assert out["r2"] > 0.9 and out["test_rows"] + out["train_rows"] == 400
    assert out["ridge_lambda"] in out["validation_mae_by_lambda"]
    noise = ridge_probe(rng.normal(size=(400, 70)), y, groups, seed=0)  # no signal: no better than the mean
    assert noise["probe_mae"] >= 0.9 * noise["mean_predictor_mae"] and noise["r2"] < 0.1


def test_frechet_distance_and_face_sharpness():
    from emojidiff_pipeline.evaluation import face_sharpness, frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 4)), rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.2 < frechet_distance(a, b + 1.0)  # a shift of 1 in 4 dims adds ~4
    with pytest.raises(ValueError, match="Frechet distance needs"):
        frechet_distance(a, b[:, :3])
    skimage_data = pytest.importorskip("skimage.data")
    from face_standins import ASTRONAUT_KPS

    image = skimage_data.astronaut()
    blurred = image.astype(np.float32)
    for _ in range(3):  # a box blur
        blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, 1, 1) + np.roll(blurred, (1, 1), (0, 1))) / 4
    assert face_sharpness(blurred.round().astype(np.uint8), ASTRONAUT_KPS) < 0.5 * face_sharpness(image, ASTRONAUT_KPS)


def test_vae_round_trip_decodes_each_images_latent_mean_in_any_batching():
    """The VAE-ceiling reference line: image -> latent mean -> decoded uint8 image, the same in any batching."""
    import torch
    from tiny_models import tiny_components

    from emojidiff_pipeline.evaluation import vae_round_trip

    vae = tiny_components()["vae"]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    out = vae_round_trip(vae, images, batch_size=2)
    assert len(out) == 3 and all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in out)
    with torch.no_grad():
        x = torch.from_numpy(images[2]).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    expected = ((y[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(out[2], expected)
    rebatched = vae_round_trip(vae, images, batch_size=64)  # float sums differ by batch: at most one grey level
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(out, rebatched))
    assert not np.array_equal(out[0], images[0])  # a random tiny VAE does not copy its input
