"""Expression branch streams (issue 9) at tiny scale: code/image/both token shapes and config round trip, exact
no-op start, refusal of a mismatched expression encoder or inputs, the encoder path in the pipeline, stage 1 with
validation / early stopping / resume, the benchmark helpers and the controlled template-use probe."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from face_standins import make_arcface_standin
from idi_standins import CENTRED_KPS, colour_scorer, fixed_detector
from safetensors.torch import load_file
from tiny_models import random_identity, tiny_adapter, tiny_components, write_stage1_world

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.evaluation import (
    Instruments,
    score_row,
    standard_error_over,
    template_use_probe,
    write_report,
)
from emojidiff_pipeline.expression import (
    CallableExpressionEncoder,
    ExpressionEncoder,
    check_adapter_encoder,
    check_expression_encoder,
    load_expression_encoder,
)
from emojidiff_pipeline.train.triplets import Triplet, strip_prompt_phrases
from emojidiff_synthetic.cases import benchmark_templates, expression_benchmark
from emojidiff_synthetic.renderer import EXPRESSION_FIELDS, Expression

ENCODER_NAME = "mean-colour-v1"
CODE_DIM = 3
NUM_CODE_TOKENS = 3  # differs from the tiny adapter's 4 identity and 8 image-stream tokens


def _mean_colour(images, keypoints):
    """A deterministic 'expression code': the centred mean colour of each image, amplified."""
    return np.stack([(np.asarray(im, np.float32).mean((0, 1)) / 255.0 - 0.5) * 8.0 for im in images])


def mean_colour_encoder() -> CallableExpressionEncoder:
    """Factory for `--expression_encoder test_expression_stream:mean_colour_encoder`."""
    return CallableExpressionEncoder(_mean_colour, ENCODER_NAME, CODE_DIM)


def solid(rgb, size: int = 48) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


RED, BLUE = solid((200, 40, 40)), solid((40, 40, 200))


def code_adapter(unet, streams: str, **kwargs) -> EmojiDiffAdapter:
    """A `from_unet` adapter (zero gates) with the given streams; no random perturbation."""
    if streams != "image":
        kwargs.setdefault("expression_code_dim", CODE_DIM)
        kwargs.setdefault("expression_encoder", ENCODER_NAME)
        kwargs.setdefault("num_expression_code_tokens", NUM_CODE_TOKENS)
    return tiny_adapter(unet, randomize=False, expression_streams=streams, **kwargs)


def open_gates(adapter: EmojiDiffAdapter, identity: float = 1.0, expression: float = 1.0) -> EmojiDiffAdapter:
    with torch.no_grad():
        for p in adapter.identity_gates.values():
            p.fill_(identity)
        for p in adapter.expression_gates.values():
            p.fill_(expression)
    return adapter


def run(pipe, seed: int = 0, **kwargs) -> np.ndarray:
    kwargs.setdefault("prompt", "a face")
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def components(one_torch_thread):
    return tiny_components()


@pytest.fixture(scope="module")
def base_image(components):
    """The plain SDXL pipeline's output, computed before any adapter processor is installed on the UNet."""
    return run(StableDiffusionXLPipeline(**components))


@pytest.fixture(scope="module")
def pipe(components, base_image):
    pipe = EmojiDiffPipeline(**components)
    pipe.set_expression_encoder(mean_colour_encoder())
    return pipe


# ----------------------------------------------------------------------------------------------- 1. shapes, config
def test_code_stream_token_shapes(components):
    unet = components["unet"]
    ids, codes = random_identity(2), torch.randn(2, CODE_DIM, generator=torch.Generator().manual_seed(0))
    embeds = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(1))

    code = code_adapter(unet, "code")
    assert code.uses_code_stream and not code.uses_image_stream
    assert not hasattr(code, "expression_resampler")
    out = code(ids, expression_codes=codes)
    assert out.expression_tokens.shape == (2, NUM_CODE_TOKENS, 64)
    assert code.expression_null_tokens.shape == (NUM_CODE_TOKENS, 64)
    name = code.expression_layer_names[0]
    assert out.expression_kv[name][0].shape == (2, NUM_CODE_TOKENS, code.config.expression_layers[name])
    assert code.encode_expression(None, codes).shape == (2, NUM_CODE_TOKENS, 64)

    both = code_adapter(unet, "both")
    assert both.uses_code_stream and both.uses_image_stream
    tokens = both(ids, embeds, expression_codes=codes).expression_tokens
    assert tokens.shape == (2, 8 + NUM_CODE_TOKENS, 64)
    assert both.expression_null_tokens.shape == (8 + NUM_CODE_TOKENS, 64)
    torch.testing.assert_close(tokens[:, :8], both.expression_resampler(embeds))  # image stream first
    torch.testing.assert_close(tokens[:, 8:], both.expression_code_proj(codes))
    keep = torch.tensor([True, False])  # a dropped row takes the null tokens of both streams
    dropped = both(ids, embeds, expression_keep=keep, expression_codes=codes).expression_tokens
    torch.testing.assert_close(dropped[1], both.expression_null_tokens)
    torch.testing.assert_close(dropped[0], tokens[0])

    image = code_adapter(unet, "image")
    assert image.uses_image_stream and not image.uses_code_stream and not hasattr(image, "expression_code_proj")
    assert image(ids, embeds).expression_tokens.shape == (2, 8, 64)
    with pytest.raises(ValueError, match="`expression_codes` was given"):
        image(ids, embeds, expression_codes=codes)
    with pytest.raises(ValueError, match="needs `expression_image_embeds`"):
        both(ids, expression_codes=codes)
    with pytest.raises(ValueError, match=r"`expression_codes` must have shape \(batch, 3\)"):
        code(ids, expression_codes=codes[:, :2])
    with pytest.raises(ValueError, match="batch"):
        both(ids, embeds, expression_codes=codes[:1])


def test_stream_config_validation(components):
    unet = components["unet"]
    with pytest.raises(ValueError, match="`expression_code_dim`"):
        tiny_adapter(unet, randomize=False, expression_streams="code")
    with pytest.raises(ValueError, match="`expression_streams` must be one of"):
        tiny_adapter(unet, randomize=False, expression_streams="codes", expression_code_dim=3)
    with pytest.raises(ValueError, match="`num_expression_code_tokens`"):
        code_adapter(unet, "code", num_expression_code_tokens=0)
    with pytest.raises(ValueError, match="`expression_encoder` must be a name"):
        code_adapter(unet, "code", expression_encoder=3)
    # the constructor defaults to no gates; from_unet turns them on
    plain = EmojiDiffAdapter(
        64,
        {},
        {code_adapter(unet, "code").expression_layer_names[0]: 64},
        expression_streams="code",
        expression_code_dim=3,
    )
    assert not hasattr(plain, "expression_gates") and plain.config.zero_init_gates is False


@pytest.mark.parametrize("streams", ["code", "both"])
def test_stream_config_round_trip(components, tmp_path, streams):
    adapter = open_gates(code_adapter(components["unet"], streams), 0.3, 0.7)
    adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["expression_streams"] == streams and config["expression_code_dim"] == CODE_DIM
    assert config["expression_encoder"] == ENCODER_NAME and config["num_expression_code_tokens"] == NUM_CODE_TOKENS
    assert config["zero_init_gates"] is True
    loaded = EmojiDiffAdapter.from_pretrained(tmp_path / "adapter")
    for key in ("expression_streams", "expression_code_dim", "expression_encoder", "num_expression_code_tokens"):
        assert loaded.config[key] == adapter.config[key]
    a, b = adapter.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("expression_gates.") for k in a) and any(k.startswith("expression_code_proj.") for k in a)
    assert next(iter(loaded.expression_gates.values())).item() == pytest.approx(0.7)
    codes = torch.randn(2, CODE_DIM)
    embeds = torch.randn(2, 17, 32) if streams == "both" else None
    torch.testing.assert_close(
        loaded(expression_image_embeds=embeds, expression_codes=codes).expression_tokens,
        adapter(expression_image_embeds=embeds, expression_codes=codes).expression_tokens,
    )


# ----------------------------------------------------------------------------------------------- 2. no-op start
@pytest.mark.parametrize("streams", ["image", "code", "both"])
def test_untrained_adapter_is_exact_no_op(pipe, components, base_image, streams):
    adapter = code_adapter(components["unet"], streams)
    assert all(g.item() == 0.0 for g in [*adapter.identity_gates.values(), *adapter.expression_gates.values()])
    pipe.set_emoji_adapter(adapter)
    inputs = dict(identity_embeds=random_identity(), expression_image=RED, identity_scale=1.0, expression_scale=1.0)
    assert np.abs(run(pipe, **inputs) - base_image).max() <= 1e-5
    open_gates(adapter, identity=0.0, expression=1.0)  # the expression branch alone now acts
    expression_only = run(pipe, **inputs)
    assert np.abs(expression_only - base_image).max() > 1e-3
    open_gates(adapter, identity=1.0, expression=1.0)
    assert np.abs(run(pipe, **inputs) - expression_only).max() > 1e-3


# ----------------------------------------------------------------------------------------------- 3. refusal
def test_pipeline_refuses_missing_or_mismatched_encoder(components):
    pipe = EmojiDiffPipeline(**components, emoji_adapter=code_adapter(components["unet"], "code"))
    inputs = dict(identity_embeds=random_identity(), expression_image=RED)
    with pytest.raises(ValueError, match=rf"set_expression_encoder.*|{ENCODER_NAME}.*set_expression_encoder"):
        run(pipe, **inputs)
    pipe.set_expression_encoder(CallableExpressionEncoder(_mean_colour, "another-model", CODE_DIM))
    with pytest.raises(ValueError, match=rf"'another-model'.*'{ENCODER_NAME}'"):
        run(pipe, **inputs)
    wide = CallableExpressionEncoder(lambda ims, kps: np.zeros((len(ims), 4)), ENCODER_NAME, 4)
    pipe.set_expression_encoder(wide)
    with pytest.raises(ValueError, match=r"width 4.*width 3"):
        run(pipe, **inputs)
    with pytest.raises(ValueError, match="width 4.*width 3"):
        check_adapter_encoder(pipe.emoji_adapter.config, wide)
    pipe.set_expression_encoder(mean_colour_encoder())
    assert run(pipe, **inputs).shape == (1, 64, 64, 3)
    with pytest.raises(TypeError, match="`expression_encoder` must be an expression encoder"):
        pipe.set_expression_encoder(object())


def test_pipeline_refuses_bad_expression_inputs(components):
    unet = components["unet"]
    pipe = EmojiDiffPipeline(**components, emoji_adapter=code_adapter(unet, "code"))
    ids = random_identity()
    for codes in (
        torch.zeros(1, 4),
        torch.zeros(1, 1, 3),
        torch.zeros(3),
        torch.full((1, 3), float("nan")),
        torch.zeros(2, 3),
        np.zeros((1, 3), np.float32),
    ):
        with pytest.raises(ValueError, match="`expression_codes`"):
            run(pipe, identity_embeds=ids, expression_codes=codes)
    embeds = torch.zeros(1, 17, 32)
    with pytest.raises(ValueError, match="`expression_embeds`.*was given.*'code' stream"):
        run(pipe, identity_embeds=ids, expression_embeds=embeds)  # image-encoder tokens for a code-only adapter
    with pytest.raises(ValueError, match="`expression_embeds`.*'code' stream"):
        run(pipe, identity_embeds=ids, expression_embeds=embeds, expression_codes=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="Pass either `expression_image`"):
        run(pipe, identity_embeds=ids, expression_image=RED, expression_codes=torch.zeros(1, 3))
    pipe.set_emoji_adapter(code_adapter(unet, "image"))
    with pytest.raises(ValueError, match="`expression_codes` was given.*no code stream"):
        run(pipe, identity_embeds=ids, expression_codes=torch.zeros(1, 3))  # codes for an image-only adapter
    with pytest.raises(ValueError, match="`expression_codes` was given.*no code"):
        run(pipe, identity_embeds=ids, expression_embeds=embeds, expression_codes=torch.zeros(1, 3))
    pipe.set_emoji_adapter(code_adapter(unet, "both"))
    with pytest.raises(ValueError, match="code stream"):  # tokens alone do not feed the code stream
        run(pipe, identity_embeds=ids, expression_embeds=embeds)


def test_expression_encoder_protocol_checks():
    class NoName:
        code_dim = 3

        def __call__(self, images, keypoints):
            return np.zeros((len(images), 3))

    class Complete(NoName):
        name = "complete"

    for bad in (object(), NoName(), lambda images, keypoints: None):
        with pytest.raises(TypeError, match="must be an expression encoder"):
            check_expression_encoder(bad)
    assert check_expression_encoder(Complete()).name == "complete" and isinstance(Complete(), ExpressionEncoder)
    zero = Complete()
    zero.code_dim = 0
    with pytest.raises(ValueError, match="code_dim"):
        check_expression_encoder(zero)

    images = [RED, BLUE]
    codes = mean_colour_encoder()(images, [None, None])
    assert codes.shape == (2, CODE_DIM) and codes.dtype == np.float32 and codes[0, 0] > 0 > codes[1, 0]
    wrong = CallableExpressionEncoder(lambda ims, kps: np.zeros((len(ims), 4)), "w", CODE_DIM)
    with pytest.raises(ValueError, match=r"'w' returned shape \(2, 4\), expected \(2, 3\)"):
        wrong(images, [None, None])
    nan = CallableExpressionEncoder(lambda ims, kps: np.full((len(ims), 3), np.nan), "n", CODE_DIM)
    with pytest.raises(ValueError, match="non-finite"):
        nan(images, [None, None])
    with pytest.raises(ValueError, match="2 images but 1 keypoint"):
        mean_colour_encoder()(images, [None])
    with pytest.raises(TypeError, match="callable"):
        CallableExpressionEncoder("fn", "x", 3)
    with pytest.raises(ValueError, match="`code_dim`"):
        CallableExpressionEncoder(_mean_colour, "x", True)
    with pytest.raises(ValueError, match="`name`"):
        CallableExpressionEncoder(_mean_colour, "", 3)

    loaded = load_expression_encoder("test_expression_stream:mean_colour_encoder")
    assert (loaded.name, loaded.code_dim) == (ENCODER_NAME, CODE_DIM)
    with pytest.raises(ValueError, match="'module:factory'"):
        load_expression_encoder("test_expression_stream")
    with pytest.raises(ValueError, match="cannot import"):
        load_expression_encoder("test_expression_stream:no_such_factory")


def test_stage1_refuses_missing_or_mismatched_encoder(components, tmp_path):
    from emojidiff_pipeline.train.stage1 import Stage1Config, run_stage1

    adapter = code_adapter(components["unet"], "code")
    config = Stage1Config(max_steps=1, batch_size=1)
    with pytest.raises(ValueError, match=f"`expression_encoder` \\('{ENCODER_NAME}'\\)"):
        run_stage1(None, None, adapter, [], None, 64, tmp_path, config)
    other = CallableExpressionEncoder(_mean_colour, "another-model", CODE_DIM)
    with pytest.raises(ValueError, match="'another-model'"):
        run_stage1(None, None, adapter, [], None, 64, tmp_path, config, expression_encoder=other)
    assert not any(tmp_path.iterdir())  # refused before writing anything


# ----------------------------------------------------------------------------------------------- 4. encoder path
class StubFace:
    """Face analyzer stand-in: one face at CENTRED_KPS (scaled) in every image; records what it was asked."""

    class Face:
        def __init__(self, kps):
            self.kps = kps

    def __init__(self):
        self.detected = []

    def detect(self, image, input_name="image"):
        self.detected.append(input_name)
        return [self.Face(CENTRED_KPS * image.shape[0] / 64.0)]

    def select(self, faces, input_name):
        return faces[0]

    def identity_embedding(self, image, input_name="identity_image", kps=None):
        raise AssertionError("not used here")

    def expression_crop(self, image, input_name="expression_image", size=224, kps=None):
        raise AssertionError("not used by a code-only adapter")


@pytest.mark.parametrize("streams", ["code", "both"])
def test_codes_from_expression_image_equal_given_codes(pipe, components, streams):
    pipe.set_emoji_adapter(open_gates(code_adapter(components["unet"], streams)))
    ids = random_identity()
    from_image = run(pipe, identity_embeds=ids, expression_image=RED)
    codes = torch.as_tensor(mean_colour_encoder()([RED], [None]))
    assert torch.equal(pipe.encode_expression_codes(RED, 1), codes)
    given = dict(expression_codes=codes)
    if streams == "both":
        given["expression_embeds"] = pipe.encode_expression(RED, 1)
    from_codes = run(pipe, identity_embeds=ids, **given)
    assert np.abs(from_image - from_codes).max() <= 1e-6
    other = run(pipe, identity_embeds=ids, expression_image=BLUE)
    assert np.abs(other - from_image).max() > 1e-3  # the code carries the template


def test_encoder_gets_the_face_analyzers_keypoints(pipe, components):
    seen = []

    def fn(images, keypoints):
        seen.append(keypoints)
        return _mean_colour(images, keypoints)

    pipe.set_emoji_adapter(open_gates(code_adapter(components["unet"], "code")))
    pipe.set_expression_encoder(CallableExpressionEncoder(fn, ENCODER_NAME, CODE_DIM))
    face = StubFace()
    try:
        pipe.set_face_analyzer(face)
        codes = pipe.encode_expression_codes([RED, BLUE], 2)
        assert codes.shape == (2, CODE_DIM)
        assert face.detected == ["expression_image[0]", "expression_image[1]"]
        np.testing.assert_allclose(seen[-1][0], CENTRED_KPS * 48 / 64)
        pipe.set_face_analyzer(None)
        pipe.encode_expression_codes(RED, 1)
        assert seen[-1] == [None]  # without an analyzer the encoder finds the face itself
    finally:
        pipe.set_face_analyzer(None)
        pipe.set_expression_encoder(mean_colour_encoder())


# ----------------------------------------------------------------------------------------------- 5. stage 1
pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import train_decoupled  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    return write_stage1_world(tmp_path_factory.mktemp("code_stage1"))  # 9 triplets


def stage1_args(world, out, *extra):
    folders = ["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")]
    folders += ["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(out)]
    sizes = "--resolution 64 --batch_size 2 --checkpointing_steps 2 --learning_rate 1e-2 --resampler_depth 1"
    sizes += " --num_expression_tokens 4 --expression_streams code"
    encoder = ["--expression_encoder", "test_expression_stream:mean_colour_encoder"]
    encoder += ["--num_expression_code_tokens", "2"]
    validation = "--num_validation 2 --validation_steps 2".split()
    return train_decoupled.parse_args([*folders, *sizes.split(), *encoder, *validation, *extra])


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def weights(folder):
    return load_file(Path(folder) / "diffusion_pytorch_model.safetensors")


def test_stage1_code_stream_validation_best_adapter_and_resume(world, tmp_path):
    full = train_decoupled.main(
        stage1_args(world, tmp_path / "full", *"--max_steps 4 --early_stopping_patience 5".split())
    )
    assert len(full) == 4 and all(np.isfinite(full))
    val = read_jsonl(tmp_path / "full" / "val_log.jsonl")
    assert [r["step"] for r in val] == [1, 3]
    for r in val:
        assert set(r) == {"step", "loss", "loss_template_swap", "loss_no_expression", "best"}
        assert all(np.isfinite(r[k]) for k in ("loss", "loss_template_swap", "loss_no_expression"))
    running = np.minimum.accumulate([r["loss"] for r in val])
    assert [r["best"] for r in val] == [True] + [bool(r["loss"] < m) for r, m in zip(val[1:], running[:-1])]
    adapter = EmojiDiffAdapter.from_pretrained(tmp_path / "full" / "adapter")
    assert adapter.config.expression_streams == "code" and adapter.config.expression_encoder == ENCODER_NAME
    assert adapter.config.expression_code_dim == CODE_DIM and adapter.config.num_expression_code_tokens == 2
    best, final = weights(tmp_path / "full" / "best_adapter"), weights(tmp_path / "full" / "adapter")
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)
    assert not any(k.startswith("expression_resampler.") for k in final)  # code stream only
    gates = [v for k, v in final.items() if k.startswith("expression_gates.")]
    assert gates and any(float(g.abs().max()) > 0 for g in gates)  # the zero gates learned

    first = train_decoupled.main(
        stage1_args(world, tmp_path / "split", *"--max_steps 2 --early_stopping_patience 5".split())
    )
    resume = "--max_steps 4 --early_stopping_patience 5 --resume_from_checkpoint latest".split()
    resumed = train_decoupled.main(stage1_args(world, tmp_path / "split", *resume))
    assert first + resumed == full
    assert read_jsonl(tmp_path / "split" / "val_log.jsonl") == val  # identical lines, `best` flags included
    split_best = weights(tmp_path / "split" / "best_adapter")
    assert all(torch.equal(split_best[k], best[k]) for k in best)


def test_stage1_early_stopping(world, tmp_path):
    # with learning rate 0 the weights never move, so the held-out loss repeats exactly: no validation after the
    # first is strictly better, and patience 1 stops at the second validation
    stop_early = "--max_steps 8 --learning_rate 0 --validation_steps 1 --early_stopping_patience 1".split()
    losses = train_decoupled.main(stage1_args(world, tmp_path / "run", *stop_early))
    assert len(losses) == 2
    val = read_jsonl(tmp_path / "run" / "val_log.jsonl")
    assert [r["step"] for r in val] == [0, 1] and [r["best"] for r in val] == [True, False]
    assert val[0]["loss"] == val[1]["loss"]
    assert [x["step"] for x in read_jsonl(tmp_path / "run" / "loss_log.jsonl")] == [0, 1]
    assert (tmp_path / "run" / "checkpoint-2" / "state.json").is_file()  # a checkpoint at the stop
    best, final = weights(tmp_path / "run" / "best_adapter"), weights(tmp_path / "run" / "adapter")
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert all(float(v.abs().max()) == 0 for k, v in final.items() if "_gates." in k)  # still the no-op start

    with pytest.raises(SystemExit):  # early stopping needs a held-out loss
        train_decoupled.parse_args(
            "--pretrained_model x --triplets t.jsonl --recognizer r.onnx --output_dir o --max_steps 2"
            " --early_stopping_patience 1".split()
        )


def test_validation_rows_split():
    from emojidiff_pipeline.train.validation import validation_rows

    train, held = validation_rows(9, 2, seed=0)
    assert len(held) == 2 and len(train) == 7
    assert sorted(torch.cat([train, held]).tolist()) == list(range(9))
    assert torch.equal(validation_rows(9, 2, seed=0)[1], held)
    assert len(validation_rows(9, 0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="`num_validation` must be in"):
        validation_rows(9, 9, seed=0)


# ----------------------------------------------------------------------------------------------- 6. helpers
def test_strip_prompt_phrases_removes_whole_parts_only():
    t = Triplet(
        "tpl.png",
        ["ref.png"],
        "tgt.png",
        "flat emoji portrait, smiling, big smile, smiling cat, Smiling ",
        template_kps=[[0, 0]] * 5,
        extra={"target_identity": "id1"},
    )
    untouched = Triplet("a.png", ["b.png"], "c.png", "flat emoji portrait, pastel palette")
    stripped, same = strip_prompt_phrases([t, untouched], ["smiling", " Big Smile ", ""])
    assert stripped.prompt == "flat emoji portrait, smiling cat"
    assert same.prompt == "flat emoji portrait, pastel palette"  # nothing to drop: unchanged
    assert strip_prompt_phrases([t], ["flat emoji portrait"])[0].prompt.startswith("smiling, big smile")
    assert strip_prompt_phrases([untouched], ["flat emoji portrait", "pastel palette"])[0].prompt == ""
    assert (stripped.template, stripped.references, stripped.target) == (t.template, t.references, t.target)
    assert stripped.template_kps == t.template_kps and stripped.extra == t.extra
    assert t.prompt.startswith("flat emoji portrait, smiling,")  # the input is not modified


def test_standard_error_over_templates():
    # group means 1.5 and 4.0: std (ddof 1) = 2.5 / sqrt(2), over sqrt(2) groups = 1.25
    assert standard_error_over([1.0, 2.0, 3.0, 5.0], ["a", "a", "b", "b"]) == pytest.approx(1.25)
    assert standard_error_over([1.0, 2.0, 4.0], ["a", "b", "c"]) == pytest.approx(
        np.std([1, 2, 4], ddof=1) / np.sqrt(3)
    )
    assert np.isnan(standard_error_over([1.0, 2.0], ["a", "a"]))  # one group: undefined


def test_benchmark_templates_cover_every_factor():
    templates = benchmark_templates(64, np.random.default_rng(0))
    assert len(templates) == 64 and all(isinstance(e, Expression) for e in templates)
    rest = np.array([0.5 if f.startswith("gaze") else 0.0 for f in EXPRESSION_FIELDS])
    active = np.abs(np.stack([e.to_vector() for e in templates]) - rest) > 0.25  # (64, 11)
    assert active.shape[1] == len(EXPRESSION_FIELDS) == 11
    counts = dict(zip(EXPRESSION_FIELDS, active.sum(0).tolist()))
    assert all(n >= 4 for n in counts.values()), counts
    assert (active[: 4 * 11].sum(1) == 1).all()  # the first 44 isolate one factor each
    gaze = np.stack([e.to_vector() for e in templates])[:44, EXPRESSION_FIELDS.index("gaze_x")]
    assert gaze.min() == 0.0 and gaze.max() == 1.0  # gaze goes to both extremes
    again = benchmark_templates(64, np.random.default_rng(0))
    assert [e.to_vector().tolist() for e in again] == [e.to_vector().tolist() for e in templates]


def test_expression_benchmark_cases_and_lines():
    cases, pairs, lines = expression_benchmark(num_identities=2, num_templates=3, seed=0)
    assert len(cases) == 6 and len(pairs) == 2 and sorted(lines) == ["neutral", "perfect", "probe_template"]
    assert all(len(v) == 6 and v[0].shape == (64, 64, 3) and v[0].dtype == np.uint8 for v in lines.values())
    assert len({c.template_person for c in cases}) == 3 and len({c.reference_person for c in cases}) == 2
    assert all(c.template_person != c.reference_person for c in cases)
    expected = [e.to_vector() for e in benchmark_templates(3, np.random.default_rng(0))]
    for i, c in enumerate(cases):
        np.testing.assert_array_equal(c.template_factors, expected[i // 2])  # template-major, 2 references each
        assert c.template_kps is not None and c.template.shape == (64, 64, 3)
        assert not np.array_equal(lines["probe_template"][i], c.template)  # another expression
        assert not np.array_equal(lines["perfect"][i], lines["neutral"][i])  # the templates are not neutral
    with pytest.raises(ValueError, match="held-out people"):
        expression_benchmark(num_identities=10_000, num_templates=1)


# ----------------------------------------------------------------------------------------------- 7. probe
@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory, components):
    from emojidiff_pipeline.face import FaceAnalyzer

    onnx = make_arcface_standin(tmp_path_factory.mktemp("probe") / "arcface.onnx", seed=3)
    face = FaceAnalyzer.from_models(fixed_detector(), recognizer=onnx)
    cases, pairs, lines = expression_benchmark(num_identities=2, num_templates=2, seed=1)
    return face, cases, lines


PROBE_KEYS = {
    "loss_right_template",
    "loss_wrong_expression_template",
    "loss_no_expression",
    "wrong_vs_right",
    "wrong_vs_right_se",
    "none_vs_right",
    "none_vs_right_se",
    "timesteps",
}


def test_template_use_probe(pipe, components, probe_setup, tmp_path):
    face, cases, lines = probe_setup
    adapter = code_adapter(components["unet"], "both")
    pipe.set_emoji_adapter(adapter)
    pipe.set_face_analyzer(face)
    try:
        closed = template_use_probe(pipe, cases, lines["perfect"], lines["probe_template"], timesteps=(400,))
        assert set(closed) == PROBE_KEYS and closed["timesteps"] == [400]
        assert all(np.isfinite(v) for k, v in closed.items() if k != "timesteps")
        # an untrained (zero-gated) adapter ignores its template: all three losses agree
        assert closed["loss_right_template"] > 0
        assert abs(closed["wrong_vs_right"]) < 1e-6 and abs(closed["none_vs_right"]) < 1e-6

        open_gates(adapter)
        probe = template_use_probe(
            pipe, cases, lines["perfect"], lines["probe_template"], timesteps=(400,), batch_size=3
        )  # two chunks
        assert set(probe) == PROBE_KEYS and all(np.isfinite(v) for k, v in probe.items() if k != "timesteps")
        assert abs(probe["wrong_vs_right"]) > 1e-6 and abs(probe["none_vs_right"]) > 1e-6
        assert probe["wrong_vs_right"] == pytest.approx(
            probe["loss_wrong_expression_template"] / probe["loss_right_template"] - 1
        )
        assert probe["wrong_vs_right_se"] >= 0 and probe["none_vs_right_se"] >= 0
        again = template_use_probe(
            pipe, cases, lines["perfect"], lines["probe_template"], timesteps=(400,), batch_size=3
        )
        assert again == probe  # fixed noise and timesteps: the same numbers on every call
    finally:
        pipe.set_face_analyzer(None)

    inst = Instruments(face, colour_scorer(), expression_fields=("r", "g", "b"))
    row = score_row(lines["perfect"], cases, inst)
    assert set(row["expression_error_per_factor"]) == {"r", "g", "b"}
    assert np.mean(list(row["expression_error_per_factor"].values())) == pytest.approx(row["expression_error"])
    assert np.isfinite(row["expression_error_se"]) and np.isfinite(row["identity_similarity_se"])
    neutral = score_row(lines["neutral"], cases, inst)
    md = write_report(
        {"tiny": row},
        {"reference_lines": {"neutral": neutral}, "template_probe": {"tiny": probe}},
        tmp_path,
        "cmd",
        "T",
    ).read_text()
    assert "| *neutral* |" in md and "| tiny |" in md and "Controlled probe" in md and "| r | g | b |" in md
    assert f"{row['expression_error']:.3f} +- {row['expression_error_se']:.3f}" in md
