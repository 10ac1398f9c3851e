"""The image stream made able to learn (issue 9) at tiny scale: grid-pooled (position-preserving) resampler queries,
the token bottleneck, the expression-code head and its auxiliary loss in stage 1 (the code loss trained alone
first, then beside the diffusion loss; validation, resume), and the refusals around them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from tiny_models import random_identity, tiny_adapter, tiny_components, write_stage1_world

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.tokens import ExpressionResampler, grid_pool

CODE_DIM = 3  # test_expression_stream's mean-colour encoder
ENCODER = "test_expression_stream:mean_colour_encoder"


def head_adapter(unet, streams: str = "image", **kwargs) -> EmojiDiffAdapter:
    kwargs.setdefault("expression_code_dim", CODE_DIM)
    kwargs.setdefault("expression_encoder", "mean-colour-v1")
    kwargs.setdefault("resampler_queries", "grid")
    return tiny_adapter(unet, randomize=False, expression_streams=streams, expression_code_head=True, **kwargs)


@pytest.fixture(scope="module")
def components(one_torch_thread):
    return tiny_components()


# ----------------------------------------------------------------------------------------------- grid queries
def test_grid_pool_means_each_region_in_reading_order():
    grid = torch.arange(16.0).view(1, 4, 4)  # one channel, patch (r, c) holds 4r + c
    media = grid.flatten(1).view(1, 16, 1)
    pooled = grid_pool(media, 4)[0, :, 0]  # 2 x 2 regions
    assert pooled.tolist() == [2.5, 4.5, 10.5, 12.5]
    with_class_token = torch.cat([torch.full((1, 1, 1), 99.0), media], dim=1)  # P = 1 + 16: the first is left out
    assert torch.equal(grid_pool(with_class_token, 4), grid_pool(media, 4))
    assert grid_pool(media, 8).shape == (1, 8, 1)  # 2 x 4 regions
    with pytest.raises(ValueError, match="square patch grid.*P=15"):
        grid_pool(media[:, :15], 4)


def test_grid_queries_keep_position():
    """A change in one corner of the image moves the grid query of that corner more than the opposite one; the
    learned queries (a near mean-pool at init) spread it over all tokens alike."""
    torch.manual_seed(0)
    embeds = torch.randn(1, 17, 32)
    changed = embeds.clone()
    changed[0, 1:3] += 3.0  # patches (0, 0) and (0, 1): the top-left region of a 2 x 4 grid of 8 tokens
    spread = {}
    for queries in ("grid", "learned"):
        torch.manual_seed(1)
        resampler = ExpressionResampler(32, 64, num_tokens=8, dim=32, depth=1, heads=4, queries=queries)
        delta = (resampler(changed) - resampler(embeds)).norm(dim=-1)[0]  # (8,) per token
        spread[queries] = (delta[0] / delta[-1]).item()
    assert spread["grid"] > 2.0
    assert spread["learned"] < 1.5
    with pytest.raises(ValueError, match="`queries` must be one of"):
        ExpressionResampler(32, 64, 8, 32, 1, 4, queries="mean")


def test_bottleneck_narrows_the_tokens():
    resampler = ExpressionResampler(32, 64, num_tokens=8, dim=32, depth=1, heads=4, bottleneck=2)
    assert resampler.bottleneck.out_features == 2 and resampler.proj_out.in_features == 2
    assert resampler(torch.randn(3, 17, 32)).shape == (3, 8, 64)


# ----------------------------------------------------------------------------------------------- the code head
def test_code_head_prediction_config_and_round_trip(components, tmp_path):
    unet = components["unet"]
    ids, embeds = random_identity(2), torch.randn(2, 17, 32)
    adapter = head_adapter(unet, resampler_bottleneck=4)
    out = adapter(ids, embeds, expression_keep=torch.tensor([True, False]))
    assert out.expression_code_prediction.shape == (2, CODE_DIM)
    # the head reads the image stream's tokens before branch dropout: a dropped row still gets its prediction
    full = adapter(ids, embeds).expression_code_prediction
    torch.testing.assert_close(out.expression_code_prediction, full)
    torch.testing.assert_close(full, adapter.expression_code_readout(adapter.expression_resampler(embeds).flatten(1)))
    assert adapter.trains_on_expression_codes and not adapter.uses_code_stream
    assert tiny_adapter(unet, randomize=False)(ids, embeds).expression_code_prediction is None  # no head

    both = head_adapter(unet, "both", num_expression_code_tokens=2)
    both_out = both(ids, embeds, expression_codes=torch.randn(2, CODE_DIM))
    assert both_out.expression_tokens.shape == (2, 8 + 2, 64) and both_out.expression_code_prediction.shape == (2, 3)

    adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["expression_code_head"] is True and config["resampler_queries"] == "grid"
    assert config["resampler_bottleneck"] == 4
    loaded = EmojiDiffAdapter.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(loaded(ids, embeds).expression_code_prediction, full)


def test_code_head_config_refusals(components):
    unet = components["unet"]
    with pytest.raises(ValueError, match="`expression_code_head` reads the code back from the image stream"):
        head_adapter(unet, "code")
    with pytest.raises(ValueError, match="`expression_code_head` needs `expression_code_dim`"):
        head_adapter(unet, expression_code_dim=None)
    with pytest.raises(ValueError, match="`resampler_queries` must be one of"):
        head_adapter(unet, resampler_queries="mean")
    with pytest.raises(ValueError, match="`resampler_bottleneck` must be a positive int or None, got 0"):
        head_adapter(unet, resampler_bottleneck=0)


def test_untrained_grid_head_adapter_is_exact_no_op(components):
    base = StableDiffusionXLPipeline(**components)

    def run(pipe, **kwargs):
        return pipe(prompt="a face", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0), **kwargs)

    before = run(base).images
    pipe = EmojiDiffPipeline(**components)
    pipe.set_emoji_adapter(head_adapter(components["unet"], resampler_bottleneck=4))
    template = np.full((48, 48, 3), (200, 40, 40), np.uint8)
    after = run(pipe, identity_embeds=random_identity(), expression_image=template).images
    assert np.abs(after - before).max() <= 1e-5


def test_model_card_names_the_code_the_image_stream_was_kept_predictive_of(components, tmp_path):
    pipe = EmojiDiffPipeline(**components, emoji_adapter=head_adapter(components["unet"]))
    pipe.save_pretrained(tmp_path / "pipe")
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert "8 image-stream tokens (kept predictive of `mean-colour-v1`'s code in training)" in card


# ----------------------------------------------------------------------------------------------- stage 1
pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import train_decoupled  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    return write_stage1_world(tmp_path_factory.mktemp("image_head_stage1"))  # 9 triplets


def stage1_args(world, out, *extra):
    extra = [a for e in extra for a in e.split()]
    folders = ["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")]
    folders += ["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(out)]
    sizes = "--resolution 64 --batch_size 2 --checkpointing_steps 2 --learning_rate 1e-2 --resampler_depth 1"
    sizes += " --num_expression_tokens 4 --expression_streams image --resampler_queries grid"
    head = ["--expression_code_head", "--expression_encoder", ENCODER]
    validation = "--num_validation 2 --validation_steps 2".split()
    return train_decoupled.parse_args([*folders, *sizes.split(), *head, *validation, *extra])


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_stage1_code_loss_pretrain_then_beside_diffusion_and_resume(world, tmp_path):
    weights = "--expression_code_loss_weight 2 --expression_code_pretrain_steps 2".split()
    full = train_decoupled.main(stage1_args(world, tmp_path / "full", "--max_steps 6", *weights))
    log = read_jsonl(tmp_path / "full" / "loss_log.jsonl")
    assert [r["step"] for r in log] == list(range(6))
    for r in log[:2]:  # the code loss alone: the logged loss is its weighted value
        assert "diffusion_loss" not in r and r["loss"] == pytest.approx(2 * r["expression_code_loss"], rel=1e-5)
    for r in log[2:]:
        assert r["loss"] == pytest.approx(r["diffusion_loss"] + 2 * r["expression_code_loss"], rel=1e-4)
    val = read_jsonl(tmp_path / "full" / "val_log.jsonl")
    assert [r["step"] for r in val] == [3, 5]  # none while the code loss trained alone
    assert all(np.isfinite(r["expression_code_loss"]) for r in val)
    adapter = EmojiDiffAdapter.from_pretrained(tmp_path / "full" / "adapter")
    assert adapter.config.expression_code_head and adapter.config.expression_encoder == "mean-colour-v1"
    assert adapter.config.expression_code_dim == CODE_DIM and not adapter.uses_code_stream

    first = train_decoupled.main(stage1_args(world, tmp_path / "split", "--max_steps 1", *weights))
    resume = ["--max_steps 6 --resume_from_checkpoint latest", *weights]
    # checkpoints every 2 steps: the 1-step run saved its last step, the resumed run repeats the rest exactly
    resumed = train_decoupled.main(stage1_args(world, tmp_path / "split", *resume))
    assert first + resumed == full
    assert read_jsonl(tmp_path / "split" / "val_log.jsonl") == val


def test_code_loss_learns_the_code(world, tmp_path):
    """Trained alone for a few steps, the head's code loss falls: the stream carries the template's code."""
    weights = "--expression_code_loss_weight 1 --expression_code_pretrain_steps 60".split()
    train_decoupled.main(stage1_args(world, tmp_path / "run", "--max_steps 60", *weights))
    losses = [r["expression_code_loss"] for r in read_jsonl(tmp_path / "run" / "loss_log.jsonl")]
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])


def test_code_loss_refusals(world, tmp_path, capsys):
    with pytest.raises(SystemExit):
        stage1_args(world, tmp_path / "a", "--max_steps 2 --expression_code_pretrain_steps 2")
    assert "--expression_code_pretrain_steps trains the code loss alone" in capsys.readouterr().err
    args = train_decoupled.parse_args(
        [
            *["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")],
            *["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(tmp_path / "c")],
            *"--resolution 64 --batch_size 2 --max_steps 2 --resampler_depth 1 --num_expression_tokens 4".split(),
            "--expression_code_loss_weight",
            "1",
        ]
    )
    with pytest.raises(ValueError, match="`expression_code_loss_weight`=1.0 needs an adapter with `expression_code"):
        train_decoupled.main(args)
