"""The synthetic base model: SDXL-shaped builders, the offline tokenizer, the three training stages, exact resume,
the exported pipeline folder, and the shipped base (when present)."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emojidiff_pipeline.train.checkpoints import list_checkpoints
from emojidiff_pipeline.train.diffusion import BatchSampler
from emojidiff_synthetic import base_model as bm
from emojidiff_synthetic.base_model.image_encoder import _similarity
from emojidiff_synthetic.base_model.report import training_summary, training_table
from emojidiff_synthetic.base_model.tokenizer import tokenize

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "synthetic" / "scripts"))
import train_base  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SDXL_NAMES = (ROOT / "tests" / "data" / "sdxl_base_1.0_attn_processor_names.txt").read_text().split()


def _attention_prefixes(names):
    """{"up_blocks.0.attentions.1", "mid_block.attentions.0", ...} of attention processor names."""
    return {
        m.group(0)
        for n in names
        if (m := re.match(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+", n))
    }


# ----------------------------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------------------------


def test_full_resolution_attention_adds_cross_attention_at_the_latent_resolution():
    config = dataclasses.replace(bm.PRESETS["tiny"], full_resolution_attention=True)
    unet = bm.build_unet(config)
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3
    assert [type(b).__name__ for b in unet.up_blocks] == ["CrossAttnUpBlock2D"] * 3
    names = list(unet.attn_processors)
    assert any(n.startswith("down_blocks.0.attentions.") for n in names)
    assert any(n.startswith("up_blocks.2.attentions.") for n in names)
    x = torch.randn(1, config.latent_channels, config.latent_size, config.latent_size)
    text = torch.randn(1, 5, config.cross_attention_dim)
    extra = {"text_embeds": torch.randn(1, config.text_projection_dim), "time_ids": torch.zeros(1, 6)}
    assert unet(x, 10, text, added_cond_kwargs=extra).sample.shape == x.shape
    assert bm.BaseModelConfig.from_dict(config.to_dict()) == config
    assert not bm.BaseModelConfig.from_dict({}).full_resolution_attention  # the shipped config.json has no key
    assert bm.PRESETS["attn16"] == dataclasses.replace(bm.PRESETS["default"], full_resolution_attention=True)
    with pytest.raises(ValueError, match="`full_resolution_attention` must be True or False"):
        bm.BaseModelConfig(full_resolution_attention=1)


def test_warm_start_reproduces_the_smaller_unet_and_trains_its_new_blocks():
    config = bm.PRESETS["tiny"]
    torch.manual_seed(0)
    source = bm.build_unet(config)
    unet = bm.build_unet(dataclasses.replace(config, full_resolution_attention=True))
    new = bm.warm_start_unet(unet, source)
    assert new and all(k.startswith(("down_blocks.0.attentions.", "up_blocks.2.attentions.")) for k in new)
    x = torch.randn(2, config.latent_channels, config.latent_size, config.latent_size)
    text = torch.randn(2, 5, config.cross_attention_dim)
    extra = {"text_embeds": torch.randn(2, config.text_projection_dim), "time_ids": torch.zeros(2, 6)}
    out = unet(x, 10, text, added_cond_kwargs=extra).sample
    torch.testing.assert_close(out, source(x, 10, text, added_cond_kwargs=extra).sample, rtol=0, atol=1e-6)
    out.square().mean().backward()  # the zero proj_out still learns: its input is the block's attention output
    assert unet.down_blocks[0].attentions[0].proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not fit the new layout"):
        bm.warm_start_unet(bm.build_unet(config), unet)


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_unet_has_sdxl_blocks_and_processor_name_pattern(size):
    unet = bm.build_unet(bm.PRESETS[size])
    assert [type(b).__name__ for b in unet.down_blocks] == list(bm.DOWN_BLOCK_TYPES)
    assert type(unet.mid_block).__name__ == bm.MID_BLOCK_TYPE
    assert [type(b).__name__ for b in unet.up_blocks] == list(bm.UP_BLOCK_TYPES)
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.layers_per_block == 2
    names = list(unet.attn_processors)
    assert _attention_prefixes(names) == _attention_prefixes(SDXL_NAMES)
    # same per-transformer-block layout: attn1 (self) and attn2 (cross) under ...transformer_blocks.K
    pattern = re.compile(
        r"^(down_blocks\.[12]|up_blocks\.[01]|mid_block)\.attentions\.\d"
        r"\.transformer_blocks\.\d+\.attn[12]\.processor$"
    )
    assert all(pattern.match(n) for n in names)
    assert sum(n.endswith("attn2.processor") for n in names) == len(names) // 2
    assert set(names) <= set(SDXL_NAMES)  # fewer transformer blocks, same names


def test_components_fit_together():
    config = bm.PRESETS["tiny"]
    tok = bm.build_tokenizer(["flat emoji portrait of a person, natural palette, blue plain background"])
    te, te2 = bm.build_text_encoders(config, tok)
    unet = bm.build_unet(config)
    assert te.config.hidden_size + te2.config.hidden_size == unet.config.cross_attention_dim
    expected = te2.config.projection_dim + 6 * unet.config.addition_time_embed_dim
    assert unet.config.projection_class_embeddings_input_dim == expected
    vae = bm.build_vae(config)
    x = torch.zeros(1, 3, 64, 64)
    assert vae.encode(x).latent_dist.mean.shape == (1, config.latent_channels, config.latent_size, config.latent_size)
    scheduler = bm.build_scheduler(config)
    assert type(scheduler).__name__ == "EulerDiscreteScheduler"
    assert scheduler.config.prediction_type == bm.build_noise_scheduler(config).config.prediction_type


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"unet_block_out_channels": (32, 64)}, "unet_block_out_channels"),
        ({"vae_block_out_channels": (16, 32, 48), "vae_norm_num_groups": 32}, "vae_norm_num_groups"),
        ({"resolution": 63}, "resolution"),
        ({"text_hidden_sizes": (64,)}, "text_hidden_sizes"),
        ({"unet_attention_head_dim": (1, 5, 3)}, "heads"),
        ({"max_length": 0}, "max_length"),
        ({"prediction_type": "sample"}, "prediction_type"),
    ],
)
def test_bad_model_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bm.BaseModelConfig(**kwargs)
    with pytest.raises(ValueError, match="Unknown base model config keys"):
        bm.BaseModelConfig.from_dict({"unet_channels": 3})


# ----------------------------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------------------------

CAPTIONS = [
    "flat emoji portrait of a person with short brown hair, pastel palette, blue striped background, smiling",
    "sketch emoji headshot of someone with glasses, mono palette, white dotted background",
    "shaded emoji avatar of a bald person, vivid palette, teal checkered background, winking",
]


def test_tokenizer_learns_caption_words_and_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    tok = bm.build_tokenizer(CAPTIONS, model_max_length=77)
    for word in ("emoji", "portrait", "palette", "background", "checkered", "winking"):
        assert tok.tokenize(word) == [word + "</w>"]
    # any string still tokenizes (byte fallback), no unknown tokens
    ids = tok("Zürich 2026 ☺").input_ids
    assert tok.unk_token_id not in ids[1:-1] or tok.unk_token_id is None
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 77 and len(loaded) == len(tok)
    batch = CAPTIONS + ["a completely new prompt"]
    assert (
        loaded(batch, padding="max_length", max_length=77).input_ids
        == tok(batch, padding="max_length", max_length=77).input_ids
    )
    with pytest.raises(ValueError, match="captions"):
        bm.build_tokenizer("a single string")


def test_encode_prompt_tokens_matches_pipeline():
    config = bm.PRESETS["tiny"]
    tok = bm.build_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    te, te2 = bm.build_text_encoders(config, tok)
    pipe = bm.assemble_pipeline(bm.build_vae(config), te, te2, tok, bm.build_unet(config))
    ids = tokenize(tok, CAPTIONS)
    with torch.no_grad():
        embeds, pooled = bm.encode_prompt_tokens(te, te2, ids, ids)
        ref, _, ref_pooled, _ = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds, ref)
    torch.testing.assert_close(pooled, ref_pooled)


# ----------------------------------------------------------------------------------------------------------------
# data helpers
# ----------------------------------------------------------------------------------------------------------------


def test_similarity_maps_points_and_views_are_valid():
    g = torch.Generator().manual_seed(0)
    src = torch.rand(3, 5, 2, generator=g) * 40 + 10
    angle, scale, t = 0.3, 1.7, torch.tensor([4.0, -2.0])
    rot = scale * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    dst = src @ rot.T + t
    m = _similarity(src, dst)
    torch.testing.assert_close(src @ m[:, :, :2].transpose(1, 2) + m[:, :, 2][:, None], dst, atol=1e-4, rtol=0)

    images = torch.rand(4, 3, 64, 64, generator=g)
    kps = torch.tensor([[20.0, 28.0], [44.0, 28.0], [32.0, 36.0], [23.0, 44.0], [41.0, 44.0]]).expand(4, 5, 2)
    views = bm.make_views(images, kps, 32, torch.Generator().manual_seed(1))
    assert views.shape == (4, 3, 32, 32) and views.min() >= 0 and views.max() <= 1
    again = bm.make_views(images, kps, 32, torch.Generator().manual_seed(1))
    torch.testing.assert_close(views, again)


def test_nt_xent_prefers_matching_views():
    z = torch.eye(4) * 5
    assert bm.nt_xent(z, z, 0.1) < bm.nt_xent(z, z.roll(1, 0), 0.1)


def test_batch_sampler_is_a_pure_function_of_step():
    a, b = BatchSampler(10, 4, seed=3), BatchSampler(10, 4, seed=3)
    rows = torch.cat([a.rows(s) for s in range(5)])
    assert sorted(rows[:10].tolist()) == list(range(10))  # the first epoch is a permutation
    assert torch.equal(b.rows(4), a.rows(4))


# ----------------------------------------------------------------------------------------------------------------
# training (a tiny collection)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_collection(tmp_path_factory):
    from emojidiff_synthetic.collection import build_collection

    root = tmp_path_factory.mktemp("collection")
    build_collection(root, num_identities=20, photos_per_identity=2, size=64, seed=0)  # held out: ids 9, 19
    return root


def _args(collection, out, *extra):
    fixed = "--size tiny --num_threads 1 --checkpointing_steps 2 --validation_steps 0 --log_every 1".split()
    return ["--collection", str(collection), "--out", str(out), *fixed, *extra]


@pytest.fixture(scope="module")
def tiny_run(tiny_collection, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    export = base / "export"
    steps = "--vae_steps 2 --unet_steps 3 --image_encoder_steps 2 --validation_steps 3".split()
    batches = "--vae_batch_size 4 --unet_batch_size 4 --image_encoder_batch_size 4".split()
    args = train_base.parse_args(
        _args(tiny_collection, base / "run", "--stage", "all", "--export_dir", str(export), *steps, *batches)
    )
    train_base.main(args)
    return base / "run", export


def test_tiny_run_writes_checkpoints_logs_and_timings(tiny_run):
    run, _ = tiny_run
    for stage in bm.STAGES:
        assert (run / stage / "final").is_dir()
        assert [p.name for p in list_checkpoints(run / stage)][-1] in ("checkpoint-2", "checkpoint-3")
        ckpt = list_checkpoints(run / stage)[-1]
        assert {p.name for p in ckpt.iterdir()} >= {"optimizer.safetensors", "state.json"}
        assert not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt"))  # no pickles
        lines = (run / stage / "loss_log.jsonl").read_text().splitlines()
        assert [json.loads(ln)["step"] for ln in lines] == list(range(len(lines)))
    assert (run / "unet" / "checkpoint-3" / "ema.safetensors").is_file()
    assert (run / "unet" / "samples" / "final.png").is_file()
    assert set(json.loads((run / "timings.json").read_text())) == set(bm.STAGES)
    vae_cfg = json.loads((run / "vae" / "final" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] != 0.18215  # measured on the collection
    assert len(list((run / "cache").glob("latents-*.safetensors"))) == 1


def test_exported_folder_loads_offline_in_both_pipelines(tiny_run):
    from diffusers import StableDiffusionXLPipeline

    from emojidiff_pipeline import EmojiDiffPipeline

    _, export = tiny_run
    components = "unet vae text_encoder text_encoder_2 tokenizer tokenizer_2 scheduler image_encoder feature_extractor"
    assert {p.name for p in export.iterdir()} >= {"model_index.json", *components.split()}
    assert not list(export.rglob("*.bin"))
    from safetensors import safe_open

    for sub, dtype in (("unet", "F16"), ("vae", "F16"), ("text_encoder", "F32"), ("image_encoder", "F32")):
        with safe_open(str(next((export / sub).glob("*.safetensors"))), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {dtype}, sub  # noqa: SIM118
    pipe = StableDiffusionXLPipeline.from_pretrained(export)
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.image_encoder)} == {
        torch.float32
    }
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        CAPTIONS[0],
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()

    emoji = EmojiDiffPipeline.from_pretrained(export)
    assert emoji.emoji_adapter is None
    assert emoji.image_encoder is not None and emoji.feature_extractor is not None
    emoji.set_progress_bar_config(disable=True)
    out2 = emoji(
        CAPTIONS[0],
        num_inference_steps=2,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    np.testing.assert_allclose(out2, out, atol=1e-5)
    tokens = emoji.encode_expression(np.zeros((40, 40, 3), np.uint8), batch_size=1, device="cpu")
    assert tokens.shape[-1] == emoji.image_encoder.config.hidden_size


@pytest.mark.parametrize("stage", ["vae", "unet", "image_encoder"])
def test_resume_repeats_the_uninterrupted_run(tiny_collection, tiny_run, tmp_path, stage):
    run, _ = tiny_run
    common = ["--stage", stage, "--batch_size", "4"]
    if stage != "vae":  # later stages read the finished VAE of the tiny run
        for d in (tmp_path / "a", tmp_path / "b"):
            (d / "vae").mkdir(parents=True)
            import shutil

            shutil.copytree(run / "vae" / "final", d / "vae" / "final")
    train_base.main(train_base.parse_args(_args(tiny_collection, tmp_path / "a", *common, "--max_steps", "4")))
    train_base.main(train_base.parse_args(_args(tiny_collection, tmp_path / "b", *common, "--max_steps", "2")))
    with pytest.raises(FileExistsError, match="--resume"):
        train_base.main(train_base.parse_args(_args(tiny_collection, tmp_path / "b", *common, "--max_steps", "4")))
    train_base.main(
        train_base.parse_args(_args(tiny_collection, tmp_path / "b", *common, "--max_steps", "4", "--resume"))
    )

    def losses(d):
        return [json.loads(ln)["loss"] for ln in (d / stage / "loss_log.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "a")) == 4
    np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-6, atol=1e-7)
    from safetensors.torch import load_file

    for folder in (tmp_path / "a" / stage / "final").iterdir():
        weights = next(folder.glob("*.safetensors"), None)
        if weights is None:
            continue
        a, b = load_file(weights), load_file(tmp_path / "b" / stage / "final" / folder.name / weights.name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_unet_stage_starts_from_a_trained_base(tiny_collection, tiny_run, tmp_path):
    import shutil

    from safetensors.torch import load_file

    run, _ = tiny_run
    (tmp_path / "r" / "vae").mkdir(parents=True)
    shutil.copytree(run / "vae" / "final", tmp_path / "r" / "vae" / "final")
    source = run / "unet" / "final"
    extra = ["--stage", "unet", "--max_steps", "1", "--batch_size", "4", "--learning_rate", "1e-12"]
    train_base.main(train_base.parse_args(_args(tiny_collection, tmp_path / "r", *extra, "--init_from", str(source))))
    info = json.loads((tmp_path / "r" / "unet" / "run_info.json").read_text())
    assert info[-1]["init_from"] == str(source)
    for name in ("unet", "text_encoder_2"):  # one step at a vanishing learning rate: still the source's weights
        weights = next((source / name).glob("*.safetensors")).name
        a, b = load_file(source / name / weights), load_file(tmp_path / "r" / "unet" / "final" / name / weights)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # the base report says which stages this run trained and where the warm start came from
    table = "\n".join(training_table(training_summary(tmp_path / "r")))
    assert "| vae | not trained in this run |" in table and "| image_encoder | not trained in this run |" in table
    assert f"| unet | 1 (warm-started from `{source}`) | 1 |" in table
    with pytest.raises(ValueError, match="--stage unet"):
        train_base.parse_args(_args(tiny_collection, tmp_path / "s", "--stage", "vae", "--init_from", str(source)))
    with pytest.raises(FileNotFoundError, match="no unet folder"):
        train_base.parse_args(_args(tiny_collection, tmp_path / "s", "--stage", "unet", "--init_from", str(tmp_path)))


# ----------------------------------------------------------------------------------------------------------------
# CLI errors
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, error, match",
    [
        (["--stage", "all", "--max_steps", "3"], ValueError, "--vae_steps"),
        (["--stage", "vae", "--max_steps", "0"], ValueError, "--max_steps"),
        (["--stage", "unet", "--batch_size", "-1"], ValueError, "--batch_size"),
        (["--num_threads", "many"], ValueError, "--num_threads"),
        (["--ema_decay", "1.5"], ValueError, "--ema_decay"),
        (["--caption_dropout", "1"], ValueError, "--caption_dropout"),
        (["--stage", "export", "--max_steps", "3"], ValueError, "trains nothing"),
    ],
)
def test_bad_args_raise_clear_errors(tiny_collection, tmp_path, extra, error, match):
    with pytest.raises(error, match=re.escape(match)):
        train_base.parse_args(["--collection", str(tiny_collection), "--out", str(tmp_path), *extra])


def test_missing_inputs_raise_clear_errors(tiny_collection, tmp_path):
    with pytest.raises(FileNotFoundError, match="build_collection"):
        train_base.parse_args(["--collection", str(tmp_path / "nope"), "--out", str(tmp_path)])
    args = train_base.parse_args(_args(tiny_collection, tmp_path / "r", "--stage", "unet", "--max_steps", "1"))
    with pytest.raises(FileNotFoundError, match="--stage vae"):
        train_base.main(args)
    args = train_base.parse_args(_args(tiny_collection, tmp_path / "r", "--stage", "export"))
    with pytest.raises(FileNotFoundError, match="have no final"):
        train_base.main(args)
    with pytest.raises(SystemExit):
        train_base.parse_args(["--collection", str(tiny_collection), "--out", str(tmp_path), "--stage", "decoder"])


# ----------------------------------------------------------------------------------------------------------------
# the quality script
# ----------------------------------------------------------------------------------------------------------------


def test_evaluate_base_names_missing_instruments(tiny_run, tiny_collection, tmp_path):
    import evaluate_base

    _, export = tiny_run
    args = evaluate_base.parse_args(
        ["--model", str(export), "--collection", str(tiny_collection), "--instrument_dir", str(tmp_path)]
    )
    with pytest.raises(RuntimeError, match=r"identity_eval\.safetensors[\s\S]*style\.safetensors"):
        evaluate_base.main(args)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        evaluate_base.parse_args(["--model", str(tmp_path), "--collection", str(tiny_collection)])


def test_evaluate_base_writes_report_with_stand_in_instruments(tiny_run, tiny_collection, tmp_path):
    """Random-weight instruments of the real classes: checks the plumbing and the report, not the numbers."""
    import evaluate_base

    from emojidiff_synthetic import instruments as ins

    torch.manual_seed(0)
    for module, name in (
        (ins.IdentityEncoder(widths=(8, 8, 8), depths=(1, 1, 1)), "identity_eval"),
        (ins.ExpressionEstimator(widths=(8, 8, 8), depths=(1, 1, 1), hidden=8), "expression_eval"),
        (ins.StyleClassifier(widths=(8, 8, 8)), "style"),
    ):
        ins.save_instrument(module.eval(), tmp_path / "instruments" / f"{name}.safetensors")
    run, export = tiny_run
    out = tmp_path / "docs"
    paths = ["--model", str(export), "--collection", str(tiny_collection), "--run_dir", str(run)]
    paths += ["--instrument_dir", str(tmp_path / "instruments"), "--grid", str(out / "g.png")]
    paths += ["--out_json", str(out / "m.json"), "--out_md", str(out / "m.md")]
    sizes = "--num_samples 16 --num_recon 8 --steps 2 --batch_size 8 --timing_repeats 1".split()
    args = evaluate_base.parse_args(paths + sizes)
    evaluate_base.main(args)
    report = json.loads((out / "m.json").read_text())
    assert set(report["headline"]) == set(evaluate_base.TARGETS)
    assert report["num_samples"] == 2  # per half of the held-out identities: 1 identity x 2 photos
    assert (out / "g.png").is_file() and (out / "base_vae_reconstructions.png").is_file()
    md = (out / "m.md").read_text()
    assert "| metric | measured | target | pass |" in md and "synthetic/scripts/train_base.py" in md


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift():
    from emojidiff_pipeline.evaluation import frechet_distance  # what the base-model report uses

    x = np.random.default_rng(0).normal(size=(200, 8))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + 1.0) == pytest.approx(8.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# the shipped base model
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (bm.ASSET_DIR / "model_index.json").is_file(),
    reason=f"the shipped base model is not built yet ({bm.ASSET_DIR}; "
    "run synthetic/scripts/train_base.py --stage all)",
)
def test_shipped_base_loads_offline_and_generates():
    from emojidiff_pipeline import EmojiDiffPipeline

    assert bm.folder_size_mb(bm.ASSET_DIR) < 30
    pipe = EmojiDiffPipeline.from_pretrained(bm.ASSET_DIR)
    assert pipe.emoji_adapter is None and pipe.image_encoder is not None
    assert _attention_prefixes(pipe.unet.attn_processors) == _attention_prefixes(SDXL_NAMES)
    pipe.set_progress_bar_config(disable=True)
    prompt = "flat emoji portrait of a person with short brown hair, natural palette, blue plain background"
    out = pipe(
        [prompt, prompt],
        num_inference_steps=4,
        guidance_scale=5.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (2, 64, 64, 3) and np.isfinite(out).all()
    assert out.std() > 0.05  # an image, not a flat field
