"""Face losses on the one-step x0 (train/face_losses.py): the differentiable crop, x0, the losses and stage 1 with
them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from face_standins import ASTRONAUT_KPS, tiny_expression_loss_model
from tiny_models import tiny_components

from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.face_geometry import align_face, arcface_template
from emojidiff_pipeline.train.face_losses import (
    DifferentiableFaceModel,
    FaceLossConfig,
    face_loss_rows,
    face_losses,
    one_step_x0,
    warp_faces,
)

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import test_train_decoupled as stage1_tests  # noqa: E402
import train_decoupled  # noqa: E402

world = stage1_tests.world  # the tiny stage-1 world fixture (base pipeline, recognizer stand-in, collection)

FACTORIES = "--expression_loss_model", "face_standins:tiny_expression_loss_model"
ID_FACTORIES = "--identity_loss_model", "face_standins:tiny_identity_loss_model"


def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def test_warp_matches_insightface_norm_crop_and_passes_gradients():
    image = astronaut()
    want = align_face(image, ASTRONAUT_KPS, 112).astype(np.float32)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1).requires_grad_(True)
    crop = warp_faces(x, ASTRONAUT_KPS[None], arcface_template(112), 112)
    got = ((crop[0].detach() + 1) * 127.5).permute(1, 2, 0).numpy()
    assert crop.shape == (1, 3, 112, 112)
    assert np.abs(got - want).mean() < 1.0  # of 255: the same crop, bilinear both
    crop.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_warp_fills_outside_with_black_and_checks_inputs():
    x = torch.zeros(1, 3, 32, 32)  # mid-grey image; points near a corner put most of the crop outside it
    kps = np.array([[[1.0, 1.0], [4.0, 1.0], [2.5, 2.5], [1.5, 4.0], [3.5, 4.0]]])
    crop = warp_faces(x, kps, arcface_template(112), 112)
    assert crop.min().item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="`kps` must have shape"):
        warp_faces(x, kps[:, :3], arcface_template(112), 112)
    with pytest.raises(ValueError, match="`images` must be a"):
        warp_faces(torch.zeros(3, 32, 32), kps, arcface_template(112), 112)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_x0_inverts_the_forward_process(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 400, 900])
    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    assert torch.allclose(one_step_x0(scheduler, noisy, target, t), x0, atol=1e-3)


def test_config_and_model_checks():
    with pytest.raises(ValueError, match="expression_weight"):
        FaceLossConfig(expression_weight=-1.0)
    with pytest.raises(ValueError, match="max_timestep"):
        FaceLossConfig(max_timestep=1.5)
    assert not FaceLossConfig().enabled and FaceLossConfig(identity_weight=0.1).enabled
    with pytest.raises(ValueError, match="`module` must be a torch.nn.Module"):
        DifferentiableFaceModel(lambda x: x, name="f")
    model = tiny_expression_loss_model()
    model.train()
    assert not model.module.training and not any(p.requires_grad for p in model.parameters())


def test_face_losses_rows_above_max_timestep_do_not_count():
    pipe = EmojiDiffPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    prediction = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]]).expand(2, 5, 2)
    model = tiny_expression_loss_model()
    config = FaceLossConfig(expression_weight=1.0, max_timestep=500)
    t = torch.tensor([100, 900])
    noisy = scheduler.add_noise(latents, noise, t)
    both = face_losses(pipe.vae, scheduler, noisy, prediction, latents, t, kps, config, model)
    first = face_losses(pipe.vae, scheduler, noisy[:1], prediction[:1], latents[:1], t[:1], kps[:1], config, model)
    assert both["expression"].item() == pytest.approx(first["expression"].item(), rel=1e-5)
    both["total"].backward()
    assert prediction.grad[0].abs().sum() > 0 and prediction.grad[1].abs().sum() == 0
    none = face_losses(pipe.vae, scheduler, noisy, prediction, latents, torch.tensor([800, 900]), kps, config, model)
    assert set(none) == {"total"} and none["total"].item() == 0.0
    with pytest.raises(ValueError, match="needs an `expression_model`"):
        face_losses(pipe.vae, scheduler, noisy, prediction, latents, t, kps, config)


def test_max_rows_reads_only_the_first_qualifying_rows():
    pipe = EmojiDiffPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    prediction = torch.randn(3, 4, 8, 8, generator=g, requires_grad=True)
    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]]).expand(3, 5, 2)
    t = torch.tensor([900, 100, 200])  # row 0 is above the bound: rows 1 and 2 qualify, max_rows keeps row 1
    noisy = scheduler.add_noise(latents, noise, t)
    config = FaceLossConfig(expression_weight=1.0, max_timestep=500, max_rows=1)
    assert face_loss_rows(t, config).tolist() == [1]
    assert face_loss_rows(t, FaceLossConfig(expression_weight=1.0, max_timestep=500)).tolist() == [1, 2]
    model = tiny_expression_loss_model()
    capped = face_losses(pipe.vae, scheduler, noisy, prediction, latents, t, kps, config, model)
    alone = face_losses(
        pipe.vae, scheduler, noisy[1:2], prediction[1:2], latents[1:2], t[1:2], kps[1:2], config, model
    )
    assert capped["expression"].item() == pytest.approx(alone["expression"].item(), rel=1e-5)
    capped["total"].backward()
    assert prediction.grad[1].abs().sum() > 0
    assert prediction.grad[0].abs().sum() == 0 and prediction.grad[2].abs().sum() == 0
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="`max_rows` must be None or an int >= 1"):
            FaceLossConfig(expression_weight=1.0, max_rows=bad)


def test_targets_read_once_give_the_same_loss_without_decoding_the_targets(monkeypatch):
    """target_face_readings (expression (N, C), identity (N, D)) read once per run stand in for decoding the targets
    at every step: the same losses and gradient, one VAE decode per call (the one-step x0) instead of two."""
    from emojidiff_pipeline.train.face_losses import target_face_readings

    pipe = EmojiDiffPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    latents, noise, base = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]]).expand(3, 5, 2)
    model = tiny_expression_loss_model()  # also the identity model here: any (B, D) reading
    config = FaceLossConfig(expression_weight=1.0, identity_weight=0.5, max_timestep=500)
    t = torch.tensor([100, 900, 300])  # the middle row is above the bound: the readings are indexed like the rows
    noisy = scheduler.add_noise(latents, noise, t)
    readings = target_face_readings(pipe.vae, latents, kps, config, model, model, batch_size=2)
    width = model(torch.zeros(1, 3, 64, 64), kps[:1]).shape[-1]
    assert {k: v.shape for k, v in readings.items()} == {
        "target_expression": (3, width),
        "target_identity": (3, width),
    }
    assert torch.allclose(readings["target_identity"].norm(dim=-1), torch.ones(3))
    reference = FaceLossConfig(identity_weight=1.0, identity_anchor="reference")
    assert target_face_readings(pipe.vae, latents, kps, reference, identity_model=model) == {}
    decodes = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z: decodes.append(len(z)) or decode(z))
    results = []
    for given in ({}, readings):
        prediction = base.clone().requires_grad_(True)
        decodes.clear()
        out = face_losses(pipe.vae, scheduler, noisy, prediction, latents, t, kps, config, model, model, **given)
        out["total"].backward()
        results.append(((out["expression"].item(), out["identity"].item()), prediction.grad, list(decodes)))
    (plain, plain_grad, plain_decodes), (read, read_grad, read_decodes) = results
    # the identity loss is 1 - cos of near-identical float32 embeddings (~1e-5 here): it cannot be resolved better
    # than a few ulps of 1 (1.2e-7 each), so the tolerance is absolute there (a CI run saw 9e-8 between the two)
    assert read == pytest.approx(plain, rel=1e-5, abs=5e-7) and torch.allclose(read_grad, plain_grad, atol=1e-6)
    assert plain_decodes == [2, 2] and read_decodes == [2]  # x0 and the targets, then x0 alone


def test_mask_expression_regions_greys_the_eyes_brows_and_mouth_only():
    from emojidiff_pipeline.train.face_losses import mask_expression_regions

    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]])
    image = torch.ones(1, 3, 64, 64, requires_grad=True)
    masked = mask_expression_regions(image, kps)
    for x, y in ((20, 24), (44, 24), (20, 15), (32, 44), (24, 44), (40, 44)):  # eyes, a brow above, the mouth
        assert masked[0, :, y, x].abs().max() == 0, (x, y)
    for x, y in ((32, 34), (2, 2), (32, 60), (60, 30)):  # the nose, the corners, the chin, the cheek's edge
        assert torch.equal(masked[0, :, y, x], torch.ones(3)), (x, y)
    masked.sum().backward()
    assert torch.equal(image.grad, (masked.detach() != 0).float())  # gradients pass where the pixels are kept
    changed = image.detach().clone()
    changed[..., 20:28, 16:24] = -1.0  # redraw the left eye: the masked image does not see it
    assert torch.equal(mask_expression_regions(changed, kps), masked.detach())
    with pytest.raises(ValueError, match="kps"):
        mask_expression_regions(image, kps[:, :4])


def test_masked_alignment_compares_the_masked_faces():
    pipe = EmojiDiffPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    latents, noise, prediction, off = (torch.randn(2, 4, 32, 32, generator=g) for _ in range(4))  # 64 px images
    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]]).expand(2, 5, 2)
    torch.manual_seed(0)  # F: a random linear read-out of the whole crop, so every pixel moves the embedding
    model = DifferentiableFaceModel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 112 * 112, 16)), "F", 112
    )
    t = torch.tensor([100, 200])
    noisy = scheduler.add_noise(latents, noise, t)

    def alignment(mask, prediction_off):
        config = FaceLossConfig(alignment_weight=1.0, max_timestep=500, alignment_mask=mask)
        out = face_losses(
            pipe.vae,
            scheduler,
            noisy,
            prediction,
            latents,
            t,
            kps,
            config,
            identity_model=model,
            prediction_off=prediction_off,
        )
        return out["alignment"].item()

    assert alignment(True, prediction) == pytest.approx(0.0, abs=1e-6)  # the same face, masked alike
    masked, plain = alignment(True, off), alignment(False, off)
    assert masked > 0 and plain > 0 and masked != pytest.approx(plain, rel=0.05), (masked, plain)
    with pytest.raises(ValueError, match="`alignment_mask` has no effect"):
        FaceLossConfig(identity_weight=1.0, alignment_mask=True)


def test_expression_factor_weights_mix_the_factors():
    pipe = EmojiDiffPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(0)
    latents, noise, prediction = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]]).expand(2, 5, 2)
    model = tiny_expression_loss_model()
    t = torch.tensor([100, 200])
    noisy = scheduler.add_noise(latents, noise, t)

    def loss(weights):
        config = FaceLossConfig(expression_weight=1.0, max_timestep=500, expression_factor_weights=weights)
        return face_losses(pipe.vae, scheduler, noisy, prediction, latents, t, kps, config, model)["expression"]

    width = model(torch.zeros(1, 3, 64, 64), kps[:1]).shape[-1]
    per_factor = [loss([1.0 if c == k else 0.0 for c in range(width)]).item() for k in range(width)]
    assert loss(None).item() == pytest.approx(np.mean(per_factor), rel=1e-5)  # None: the plain mean
    assert loss([1.0] * width).item() == pytest.approx(loss(None).item(), rel=1e-6)
    weights = [1.0 + 2 * k for k in range(width)]
    assert loss(weights).item() == pytest.approx(np.dot(weights, per_factor) / sum(weights), rel=1e-5)
    with pytest.raises(ValueError, match=f"has {width + 1} weights but the expression model gives {width}"):
        loss([1.0] * (width + 1))
    for bad in ([], [1.0, -1.0], [0.0, 0.0], "1,2"):
        with pytest.raises(ValueError, match="`expression_factor_weights` must be"):
            FaceLossConfig(expression_weight=1.0, expression_factor_weights=bad)
    with pytest.raises(ValueError, match="no effect with `expression_weight` 0"):
        FaceLossConfig(identity_weight=1.0, expression_factor_weights=[1.0])


def args_for(world, out, *extra):
    """The stage-1 test run of test_train_decoupled.py, with the face losses on every timestep."""
    return stage1_tests.args_for(world, out, "--face_loss_max_timestep", "999", *extra)


def test_stage1_with_face_losses_logs_validates_and_resumes_exactly(world, tmp_path):
    validation = "--num_validation 2 --validation_steps 2".split()
    face = (*FACTORIES, "--expression_loss_weight", "1.0", *ID_FACTORIES, "--identity_loss_weight", "0.5", *validation)
    full = train_decoupled.main(args_for(world, tmp_path / "full", "--max_steps", "4", *face))
    assert len(full) == 4 and all(np.isfinite(full))
    log = [json.loads(x) for x in (tmp_path / "full" / "loss_log.jsonl").read_text().splitlines()]
    for record in log:
        assert record["face_expression"] > 0 and record["face_identity"] > 0
        want = record["diffusion_loss"] + record["face_expression"] + 0.5 * record["face_identity"]
        assert record["loss"] == pytest.approx(want, rel=1e-5)
    val = [json.loads(x) for x in (tmp_path / "full" / "val_log.jsonl").read_text().splitlines()]
    assert [v["step"] for v in val] == [1, 3]
    assert all(v["objective"] > v["loss"] and "face_identity" in v for v in val)
    plain = train_decoupled.main(args_for(world, tmp_path / "plain", "--max_steps", "4"))
    assert plain != full  # the face losses change training

    first = train_decoupled.main(args_for(world, tmp_path / "split", "--max_steps", "2", *face))
    resumed = train_decoupled.main(
        args_for(world, tmp_path / "split", "--max_steps", "4", "--resume_from_checkpoint", "latest", *face)
    )
    assert first + resumed == full  # bit-identical


def test_gradient_checkpointing_keeps_the_losses_and_sets_the_unet_and_vae(world, tmp_path, monkeypatch):
    """--gradient_checkpointing recomputes blocks in the backward pass: the same losses (to float noise), on a UNet
    and a VAE whose checkpointing is on."""
    face = (*FACTORIES, "--expression_loss_weight", "1.0", *ID_FACTORIES, "--identity_loss_weight", "0.5")
    plain = train_decoupled.main(args_for(world, tmp_path / "plain", "--max_steps", "3", *face))
    seen = {}
    import emojidiff_pipeline.train.stage1 as stage1_module

    train = stage1_module.train_stage1

    def spy(accelerator, pipe, *rest, **kwargs):
        out = train(accelerator, pipe, *rest, **kwargs)
        seen["unet"], seen["vae"] = pipe.unet.is_gradient_checkpointing, pipe.vae.is_gradient_checkpointing
        return out

    monkeypatch.setattr(stage1_module, "train_stage1", spy)
    checkpointed = train_decoupled.main(
        args_for(world, tmp_path / "ckpt", "--max_steps", "3", "--gradient_checkpointing", *face)
    )
    assert seen == {"unet": True, "vae": True}
    assert checkpointed == pytest.approx(plain, rel=1e-5)


def test_face_loss_flags_are_checked(world, tmp_path):
    with pytest.raises(SystemExit):  # a weight without a model
        args_for(world, tmp_path / "a", "--max_steps", "2", "--expression_loss_weight", "1")
    with pytest.raises(SystemExit):  # a model that would be ignored
        args_for(world, tmp_path / "b", "--max_steps", "2", *FACTORIES)
    with pytest.raises(SystemExit):
        args_for(world, tmp_path / "c", "--max_steps", "2", *ID_FACTORIES, "--identity_loss_weight", "-1")
    with pytest.raises(SystemExit):  # a row cap without any face loss would be ignored
        args_for(world, tmp_path / "e", "--max_steps", "2", "--face_loss_rows", "4")
    with pytest.raises(SystemExit):
        args_for(
            world,
            tmp_path / "f",
            "--max_steps",
            "2",
            *FACTORIES,
            "--expression_loss_weight",
            "1",
            "--face_loss_rows",
            "0",
        )
    model = ["--expression_loss_model", "face_standins:not_a_face_model", "--expression_loss_weight", "1"]
    bad = args_for(world, tmp_path / "d", "--max_steps", "2", *model)
    with pytest.raises(ValueError, match="must return a DifferentiableFaceModel, got Linear"):
        train_decoupled.main(bad)


def test_synthetic_world_face_loss_models_read_as_its_scorers():
    from emojidiff_synthetic.load import expression_scorer, face_loss_model
    from emojidiff_synthetic.renderer import Expression, Identity, Pose, Style, render

    renders = [render(Identity.from_seed(s), Expression.random(s), Style.random(s), Pose.random(s)) for s in range(4)]
    images = np.stack(
        [np.asarray(r.image.convert("RGB")) if hasattr(r.image, "convert") else r.image for r in renders]
    )
    kps = np.stack([r.keypoints for r in renders]).astype(np.float32)
    want = expression_scorer("train")(list(images), list(kps))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        got = face_loss_model("expression", "train")(x, kps).numpy()
    assert np.abs(got - want).max() < 0.02  # the differentiable crop reads as insightface's norm_crop
    assert face_loss_model("identity").name == "emojidiff-synthetic/identity-train"
    with pytest.raises(ValueError, match="`kind` must be one of"):
        face_loss_model("style")
