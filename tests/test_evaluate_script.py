"""training/evaluate.py on user data (--references / --templates) at tiny scale, with insightface-pack stand-ins."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from face_standins import make_arcface_standin, write_model_pack
from tiny_models import tiny_adapter, tiny_components

from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.evaluation import write_report
from emojidiff_synthetic import Expression, Identity, Pose, Style, render

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import evaluate  # noqa: E402

SCORER = "idi_standins:colour_scorer"  # factory() -> scorer(images, kps) -> (N, 3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _portrait(seed: int, smile: float = 0.0) -> np.ndarray:
    style = Style(rendering="flat", palette="natural", background="blue", pattern="plain")
    return render(Identity.from_seed(seed), Expression(smile=smile), style, Pose()).image  # (64, 64, 3) uint8


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    components = tiny_components()
    EmojiDiffPipeline(**components).save_pretrained(root / "base")
    tiny_adapter(components["unet"], num_expression_tokens=4, resampler_depth=1).save_pretrained(root / "adapter")
    # every image here is 64x64 (the stand-in detector's image size): one face where the renderer puts it
    kps = render(Identity.from_seed(0), Expression(), Style.random(np.random.default_rng(0)), Pose()).keypoints
    write_model_pack(root / "faces", "pack", faces=[{"kps": kps}], image_size=(64, 64), seed=1)
    write_model_pack(root / "faces", "evalpack", faces=[{"kps": kps}], image_size=(64, 64), seed=2)
    make_arcface_standin(root / "eval_arcface.onnx", seed=3)
    _save(root / "refs" / "alice" / "0.png", _portrait(10))
    _save(root / "refs" / "alice" / "1.png", _portrait(10, smile=0.8))  # the same-person pair
    _save(root / "refs" / "bob" / "0.jpg", _portrait(11))
    _save(root / "templates" / "bob.png", _portrait(11, smile=0.9))  # skipped for bob's reference
    _save(root / "templates" / "carol.webp", _portrait(12, smile=0.5))
    return root


def user_args(world, out, *extra):
    rows = ["--row", "base=base", "--row", f"emojidiff={world / 'adapter'}"]
    rows += ["--row", f"identity_only={world / 'adapter'}@id_only"]
    folders = ["--pretrained_model", str(world / "base"), "--references", str(world / "refs")]
    folders += ["--templates", str(world / "templates")]
    faces = ["--face_pack", "pack", "--face_root", str(world / "faces")]
    faces += ["--eval_face_pack", "evalpack", "--eval_face_root", str(world / "faces")]
    faces += ["--eval_recognizer", str(world / "eval_arcface.onnx"), "--eval_expression_estimator", SCORER]
    prompts = ["--prompt", "a portrait photo", "--prompt", "a cartoon face"]
    sizes = "--steps 2 --resolution 64 --batch_size 2 --device cpu".split()
    return [*rows, "--out", str(out), *folders, *faces, *prompts, *sizes, *extra]


def test_user_data_mode_end_to_end(world, tmp_path):
    out = tmp_path / "out"
    results = evaluate.main(evaluate.parse_args(user_args(world, out)))
    report = json.loads((out / "results.json").read_text())  # NaN literals are read back as float("nan")
    assert set(report["rows"]) == {"base", "emojidiff", "identity_only"}
    for name, row in report["rows"].items():
        assert row["num_cases"] == 3 and row["no_face_rate"] == 0.0, name
        for metric in ("identity_similarity", "expression_error", "identity_leakage"):
            assert math.isfinite(row[metric]), (name, metric)
        assert math.isnan(row["style_leakage"]) and math.isnan(row["style_following"]), name
    assert math.isfinite(report["same_person_identity_similarity"])
    assert report["rows"]["emojidiff"]["identity_similarity"] == results["rows"]["emojidiff"]["identity_similarity"]
    md = (out / "results.md").read_text()
    assert md.startswith(f"# {evaluate.USER_TITLE}\n")
    assert "| n/a | n/a |" in md and "nan" not in md
    assert "2 reference people x 2 templates" in md
    for name in report["rows"]:
        assert PIL.Image.open(out / f"grid_{name}.png").size == (3 * 64, 3 * 64)  # (2 refs + 1) x (2 tpls + 1)


def test_user_cases_pair_people_and_cycle_prompts(world, tmp_path):
    cases, pairs, _ = evaluate.user_cases(str(world / "refs"), str(world / "templates"), ["p0", "p1"])
    got = [(c.reference_person, c.template_person, c.prompt) for c in cases]
    assert got == [("alice", "bob", "p0"), ("alice", "carol", "p1"), ("bob", "carol", "p0")]
    assert all(c.reference.dtype == np.uint8 and c.reference.shape == (64, 64, 3) for c in cases)
    assert all(c.reference_kps is None and c.template_kps is None for c in cases)
    assert len(pairs) == 1 and not np.array_equal(pairs[0][0], pairs[0][1])
    # with subfolders, a template's person is its subfolder's name
    _save(tmp_path / "tpl" / "dave" / "a.png", _portrait(13))
    _save(tmp_path / "tpl" / "dave" / "b.png", _portrait(13, smile=1.0))
    cases, _, _ = evaluate.user_cases(str(world / "refs"), str(tmp_path / "tpl"), ["p"])
    assert [(c.reference_person, c.template_person) for c in cases] == [("alice", "dave")] * 2 + [("bob", "dave")] * 2


@pytest.mark.parametrize("drop", ["--templates", "--pretrained_model", "--face_pack"])
def test_user_data_mode_names_missing_options(world, tmp_path, capsys, drop):
    args = user_args(world, tmp_path)
    i = args.index(drop)
    del args[i : i + 2]
    with pytest.raises(SystemExit):
        evaluate.parse_args(args)
    assert drop in capsys.readouterr().err


def test_user_data_mode_defaults_to_packaged_eval_instruments(world, tmp_path, capsys):
    args = user_args(world, tmp_path)
    for drop in ("--eval_face_pack", "--eval_recognizer", "--eval_expression_estimator"):
        i = args.index(drop)
        del args[i : i + 2]
    parsed = evaluate.parse_args(args)
    assert parsed.eval_detector == evaluate.EVAL_DETECTOR and parsed.eval_recognizer == evaluate.EVAL_RECOGNIZER
    assert parsed.eval_expression_estimator == evaluate.EVAL_EXPRESSION
    with pytest.raises(SystemExit):  # one eval-side detector, not two
        evaluate.parse_args([*args, "--eval_face_pack", "evalpack", "--eval_detector", evaluate.EVAL_DETECTOR])
    assert "--eval_face_pack and --eval_detector" in capsys.readouterr().err
    # base rows need no face front-end of the pipeline's own
    base_only = ["--row", "base=base", "--pretrained_model", str(world / "base"), "--references", str(world / "refs")]
    base_only += ["--templates", str(world / "templates")]
    assert evaluate.parse_args(base_only).face_pack is None


def test_user_only_options_need_references(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--row", "base=base", "--eval_face_pack", "buffalo_l"])
    assert "--eval_face_pack only apply to user data" in capsys.readouterr().err
    args = evaluate.parse_args(["--row", "base=base"])  # the synthetic path's arguments are unchanged
    assert args.references is None and args.resolution is None and args.title.startswith("EmojiDiff in the synthetic")


def test_bad_folders_and_images_name_the_argument_and_path(world, tmp_path):
    def run(refs, tpls):
        args = user_args(world, tmp_path / "out")
        args[args.index("--references") + 1], args[args.index("--templates") + 1] = str(refs), str(tpls)
        evaluate.main(evaluate.parse_args(args))

    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"--references: {missing} does not exist"):
        run(missing, world / "templates")
    with pytest.raises(ValueError, match=f"--templates: {missing} does not exist"):
        run(world / "refs", missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"--references: {tmp_path / 'empty'} holds no person subfolders"):
        run(tmp_path / "empty", world / "templates")
    (tmp_path / "refs_no_images" / "erin").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"--references: no images .* in {tmp_path / 'refs_no_images' / 'erin'}"):
        run(tmp_path / "refs_no_images", world / "templates")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "frank.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"--templates: could not open image {tmp_path / 'broken' / 'frank.png'}"):
        run(world / "refs", tmp_path / "broken")
    _save(tmp_path / "only_bob" / "bob" / "0.png", _portrait(11))
    with pytest.raises(ValueError, match="--templates: every template .* belongs to a person under --references"):
        run(tmp_path / "only_bob", tmp_path / "only_bob")


def test_base_without_image_encoder_is_named_before_generating(world, tmp_path):
    components = tiny_components()
    del components["image_encoder"], components["feature_extractor"]
    EmojiDiffPipeline(**components).save_pretrained(tmp_path / "no_encoder")
    args = user_args(world, tmp_path / "out")
    args[args.index("--pretrained_model") + 1] = str(tmp_path / "no_encoder")
    with pytest.raises(ValueError, match="--pretrained_model .* has no `image_encoder`"):
        evaluate.main(evaluate.parse_args(args))
    assert not (tmp_path / "out").exists()


def test_write_report_shows_n_a_only_for_columns_not_measured(tmp_path):
    nan = float("nan")
    row = {
        "identity_similarity": nan,
        "expression_error": 0.5,
        "identity_leakage": 0.0,
        "style_leakage": nan,
        "style_following": nan,
        "face_sharpness": 20.0,
        "frechet_to_real": nan,
        "no_face_rate": 1.0,
        "num_cases": 2,
    }
    plain = write_report({"r": row}, {}, tmp_path / "plain", "cmd", "T").read_text()
    # as before (the synthetic report)
    assert "| r | nan | 0.500 | 0.000 | nan | nan | 20.000 | nan | 1.000 |" in plain
    user = write_report(
        {"r": row}, {}, tmp_path / "user", "cmd", "T", not_measured=(*evaluate.STYLE_COLUMNS, "frechet_to_real")
    )
    assert "| r | nan | 0.500 | 0.000 | n/a | n/a | 20.000 | n/a | 1.000 |" in user.read_text()


def test_row_specs_give_folder_and_expression_scale():
    assert evaluate.parse_row_spec("base") == ("base", 1.0)
    assert evaluate.parse_row_spec("runs/a@b/adapter") == ("runs/a@b/adapter", 1.0)
    assert evaluate.parse_row_spec("runs/x/adapter@id_only") == ("runs/x/adapter", 0.0)
    assert evaluate.parse_row_spec("runs/x/adapter@exp=2.5") == ("runs/x/adapter", 2.5)
    assert evaluate.parse_row_spec("runs/x/adapter@exp=2.5@eg=9") == ("runs/x/adapter", 2.5)
    RowSpec = evaluate.RowSpec
    assert RowSpec.parse("runs/x/adapter@eg=9") == RowSpec("runs/x/adapter", expression_guidance=9.0)
    assert RowSpec.parse("runs/x/adapter@exp=2") == RowSpec("runs/x/adapter", expression_scale=2.0)
    # options in any order, a folder with '@' in it kept whole
    both = RowSpec("runs/a@b/adapter", identity_scale=1.5, expression_scale=1.2, expression_guidance=3.0)
    assert RowSpec.parse("runs/a@b/adapter@id=1.5@exp=1.2@eg=3") == both
    assert RowSpec.parse("runs/a@b/adapter@eg=3@exp=1.2@id=1.5") == both
    assert RowSpec.parse("runs/x/adapter@id_only@id=2") == RowSpec("runs/x/adapter", 2.0, 0.0)
    assert RowSpec.parse("runs/x/adapter").default_scales and not both.default_scales
    assert not RowSpec.parse("runs/x/adapter@id=1.5").default_scales and RowSpec.parse("base").is_base
    for bad in ("a@eg=-2", "a@eg=x", "a@id_only@eg=3", "a@exp=0@eg=3"):
        with pytest.raises(ValueError, match="'@eg='"):
            evaluate.parse_row_spec(bad)
    for bad, match in [
        ("a@id=-1", "'@id='"),
        ("a@id=x", "'@id='"),
        ("a@exp=1@exp=2", "second time"),
        ("a@id_only@exp=2", "second time"),
        ("base@eg=3", "'base' has no adapter"),
        ("base@id=2", "'base' has no adapter"),
    ]:
        with pytest.raises(ValueError, match=match):
            RowSpec.parse(bad)
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--row", "r=runs/x/adapter@exp=big"])


def test_generate_row_passes_the_specs_scales_to_the_pipeline(monkeypatch):
    """'@id=' / '@exp=' / '@eg=' reach the pipeline call (not silently dropped); 'base' gets no adapter inputs."""
    from types import SimpleNamespace

    from emojidiff_pipeline.evaluation import GenerationSettings, generate_row, rows

    calls = []

    def pipe(prompts, **kwargs):
        calls.append(kwargs)
        return SimpleNamespace(images=np.zeros((len(prompts), 4, 4, 3), np.float32))

    monkeypatch.setattr(rows, "attach_row", lambda *a, **k: None)
    cases = [SimpleNamespace(reference=np.zeros((4, 4, 3), np.uint8), template=None, prompt="p")] * 3
    settings = GenerationSettings(batch_size=2, steps=1)
    images = generate_row(pipe, "runs/x@id=1.5@exp=0.5@eg=2", cases, face=None, settings=settings)
    assert len(images) == 3 and len(calls) == 2
    assert {(c["identity_scale"], c["expression_scale"], c["expression_guidance_scale"]) for c in calls} == {
        (1.5, 0.5, 2.0)
    }
    calls.clear()
    generate_row(pipe, "base", cases, face=None, settings=settings)
    assert all("identity_scale" not in c and "identity_image" not in c for c in calls)


def test_row_cache_key_follows_weights_base_settings_and_scoring_code(tmp_path, monkeypatch):
    """A cached row is reused only for the same weights, base, settings and scoring code (a row scored before a
    metric existed is scored again, not reused without it)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    args = evaluate.parse_args(["--row", f"a={adapter}"])
    key = evaluate.row_key(str(adapter), args)
    assert evaluate.row_key(str(adapter), args) == key
    assert evaluate.row_key(f"{adapter}@id=1.5", args) != key
    args.steps += 1
    assert evaluate.row_key(str(adapter), args) != key
    args.steps -= 1
    assert evaluate.row_key(str(adapter), args, "base digest") != key  # the base replaced in place
    (adapter / "diffusion_pytorch_model.safetensors").write_bytes(b"xy")  # retrained weights
    key = evaluate.row_key(str(adapter), args)
    monkeypatch.setattr(evaluate, "scoring_fingerprint", lambda: "other scoring code")
    assert evaluate.row_key(str(adapter), args) != key
    evaluate.write_row_cache(tmp_path, "a", key, {"expression_error": 0.1}, None)
    (tmp_path / "grid_a.png").write_bytes(b"")
    assert evaluate.read_row_cache(tmp_path, "a", key)["scores"] == {"expression_error": 0.1}
    assert evaluate.read_row_cache(tmp_path, "a", evaluate.row_key(str(adapter), args)) is None
