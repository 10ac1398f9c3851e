"""Stage 2 (train/ica.py, training/train_ica.py) at tiny scale: ANI's bound, the ICA losses, the CLI and resume."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from face_standins import make_arcface_standin, tiny_identity_loss_model
from tiny_models import tiny_adapter, tiny_components, write_tiny_collection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.adapted_unet import AdaptedUNet
from emojidiff_pipeline.train.cache import adapted_prediction
from emojidiff_pipeline.train.diffusion import training_noise_scheduler
from emojidiff_pipeline.train.face_losses import FaceLossConfig, face_losses
from emojidiff_pipeline.train.ica import AniConfig, calibrate_max_timestep

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import train_ica  # noqa: E402

ID_MODEL = "face_standins:tiny_identity_loss_model"


def tiny_cache(n: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    kps = torch.tensor([[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]])
    return {
        "latents": torch.randn(n, 4, 8, 8, generator=g),
        "identity": torch.nn.functional.normalize(torch.randn(n, 1, 512, generator=g), dim=-1),
        "templates": torch.randn(n, 5, 32, generator=g),
        "template_index": torch.arange(n),
        "prompt_embeds": torch.randn(1, 77, 64, generator=g),
        "pooled": torch.randn(1, 32, generator=g),
        "prompt_index": torch.zeros(n, dtype=torch.long),
        "add_time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        "target_kps": kps.expand(n, 5, 2).clone(),
    }


@pytest.fixture(scope="module")
def tiny():
    pipe = EmojiDiffPipeline(**tiny_components())
    adapter = tiny_adapter(pipe.unet)
    return pipe, adapter


def test_ani_bound_is_the_largest_timestep_keeping_identity_and_reproducible(tiny, caplog):
    pipe, adapter = tiny
    cache, model = tiny_cache(), tiny_identity_loss_model()
    config = AniConfig(threshold=0.0, candidates=(50, 500, 950), calibration_size=4)
    first = calibrate_max_timestep(pipe, adapter, cache, model, config, batch_size=2)
    assert first == calibrate_max_timestep(pipe, adapter, cache, model, config, batch_size=2)  # reproducible
    other = calibrate_max_timestep(pipe, adapter, cache, model, config, batch_size=4)["identity_by_timestep"]
    sims = first["identity_by_timestep"]
    assert other == pytest.approx(sims, abs=1e-5)  # the batch size does not change the measure
    assert set(sims) == {50, 500, 950} and sims[50] > sims[950]  # more noise, less identity kept
    for threshold in (sims[50] - 1e-6, sims[500] - 1e-6):
        ani = calibrate_max_timestep(pipe, adapter, cache, model, AniConfig(threshold, (50, 500, 950), 4))
        assert ani["max_timestep"] == max(t for t, v in sims.items() if v >= threshold)
    with caplog.at_level("WARNING"):
        none = calibrate_max_timestep(pipe, adapter, cache, model, AniConfig(1.0, (50, 500, 950), 4))
    assert none["max_timestep"] == 50 and "no candidate timestep" in caplog.text
    with pytest.raises(ValueError, match="`candidates` must be distinct ascending"):
        AniConfig(candidates=(500, 100))
    fixed = calibrate_max_timestep(pipe, adapter, cache, model, AniConfig(1.0, (50,), 4, fixed_max_timestep=950))
    assert fixed["max_timestep"] == 950 and fixed["fixed"] is True  # kept although identity there is below 1.0
    assert fixed["identity_by_timestep"] == pytest.approx({950: sims[950]}, abs=1e-5)
    with pytest.raises(ValueError, match="`fixed_max_timestep` must be None or an int >= 0"):
        AniConfig(fixed_max_timestep=-3)


def test_ica_losses_decrease_on_a_fixed_batch(tiny):
    pipe, _ = tiny
    adapter = tiny_adapter(pipe.unet, seed=3)
    adapted = AdaptedUNet(pipe.unet, adapter)
    scheduler = training_noise_scheduler(pipe.scheduler)
    cache, model = tiny_cache(), tiny_identity_loss_model()
    rows = torch.arange(4)
    t = torch.tensor([100, 200, 300, 400])
    noise = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy = scheduler.add_noise(cache["latents"], noise, t)
    text, pooled = cache["prompt_embeds"][cache["prompt_index"]], cache["pooled"][cache["prompt_index"]]
    config = FaceLossConfig(identity_weight=1.0, alignment_weight=1.0, max_timestep=999)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=3e-3)
    ones = torch.ones(4, dtype=torch.bool)
    totals = []
    for _ in range(12):
        pred = adapted_prediction(adapted, cache, rows, noisy, t, text, pooled, ones, ones, "cpu")
        with torch.no_grad():
            off = adapted_prediction(adapted, cache, rows, noisy, t, text, pooled, ones, ~ones, "cpu")
        parts = face_losses(
            pipe.vae,
            scheduler,
            noisy,
            pred,
            cache["latents"],
            t,
            cache["target_kps"],
            config,
            identity_model=model,
            prediction_off=off,
        )
        assert set(parts) == {"total", "identity", "alignment"}
        totals.append(parts["total"].item())
        optimizer.zero_grad()
        parts["total"].backward()
        optimizer.step()
    assert totals[-1] < 0.9 * totals[0]
    with pytest.raises(ValueError, match="reference embeddings are 512-d but the identity model"):
        face_losses(
            pipe.vae,
            scheduler,
            noisy,
            pred.detach(),
            cache["latents"],
            t,
            cache["target_kps"],
            FaceLossConfig(identity_weight=1.0, identity_anchor="reference", max_timestep=999),
            identity_model=model,
            reference_embeds=cache["identity"][:, 0],
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ica")
    pipe = EmojiDiffPipeline(**tiny_components())
    pipe.save_pretrained(root / "base")
    tiny_adapter(pipe.unet, num_expression_tokens=4).save_pretrained(root / "stage1")
    make_arcface_standin(root / "arcface.onnx", seed=1)
    write_tiny_collection(root, num_identities=3, photos_per_identity=3)
    return root


def args_for(world, out, *extra):
    folders = ["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")]
    folders += ["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(out)]
    sizes = "--resolution 64 --batch_size 2 --checkpointing_steps 2 --learning_rate 1e-3".split()
    losses = ["--adapter", str(world / "stage1"), "--identity_loss_model", ID_MODEL, "--identity_loss_weight", "1"]
    losses += "--alignment_loss_weight 1 --ani_threshold -1 --ani_candidates 300,600 --ani_calibration_size 3".split()
    return train_ica.parse_args([*folders, *sizes, *losses, *extra])


def test_train_ica_stores_the_bound_and_resumes_exactly(world, tmp_path):
    full, ani = train_ica.main(args_for(world, tmp_path / "full", "--max_steps", "4"))
    assert len(full) == 4 and all(np.isfinite(full)) and ani["max_timestep"] == 600  # threshold -1: the largest
    assert json.loads((tmp_path / "full" / "ani.json").read_text()) == ani
    assert json.loads((tmp_path / "full" / "adapter" / "ani.json").read_text())["max_timestep"] == 600
    EmojiDiffAdapter.from_pretrained(tmp_path / "full" / "adapter")  # the extra file does not disturb loading
    log = [json.loads(x) for x in (tmp_path / "full" / "loss_log.jsonl").read_text().splitlines()]
    assert all("face_alignment" in r and "face_identity" in r for r in log)
    info = json.loads((tmp_path / "full" / "run_info.json").read_text())
    assert info["config"]["max_train_timestep"] == 600 and info["config"]["face_losses"]["max_timestep"] == 600

    first, _ = train_ica.main(args_for(world, tmp_path / "split", "--max_steps", "2"))
    resume = "--max_steps 4 --resume_from_checkpoint latest --ani_threshold 1.0".split()
    resumed, again = train_ica.main(args_for(world, tmp_path / "split", *resume))
    assert again == ani  # a resumed run keeps its calibrated bound
    assert first + resumed == full  # bit-identical
    with pytest.raises(ValueError, match="fixed_max_timestep=300"):  # not silently the stored ANI bound
        resume = "--max_steps 5 --resume_from_checkpoint latest --fixed_max_timestep 300".split()
        train_ica.main(args_for(world, tmp_path / "split", *resume))
    _, hand = train_ica.main(args_for(world, tmp_path / "fixed", "--max_steps", "1", "--fixed_max_timestep", "300"))
    assert hand["max_timestep"] == 300 and hand["fixed"] is True and list(hand["identity_by_timestep"]) == ["300"]


def test_face_loss_rows_limit_the_expression_off_pass_to_the_rows_read(world, tmp_path, monkeypatch):
    from emojidiff_pipeline.train import stage1

    calls = []  # (rows in the call, expression branch on for any of them)

    def recording(adapted, cache, rows, *args, **kwargs):
        calls.append((len(rows), bool(args[5].any())))  # args: noisy, t, text, pooled, keep_id, keep_exp
        return adapted_prediction(adapted, cache, rows, *args, **kwargs)

    adapted_prediction = stage1.adapted_prediction
    monkeypatch.setattr(stage1, "adapted_prediction", recording)
    losses, _ = train_ica.main(args_for(world, tmp_path / "capped", "--max_steps", "2", "--face_loss_rows", "1"))
    assert len(losses) == 2 and all(np.isfinite(losses))
    # per step: the training pass on the batch of 2, then the expression-off pass on the one row the losses read
    assert [n for n, _ in calls] == [2, 1, 2, 1] and not calls[1][1] and not calls[3][1]


def test_train_ica_refuses_a_recognizer_stage1_was_not_trained_with(world, tmp_path):
    pipe = EmojiDiffPipeline.from_pretrained(world / "base")
    tiny_adapter(pipe.unet, num_expression_tokens=4, identity_encoder="insightface:glintr100").save_pretrained(
        tmp_path / "stage1_other"
    )
    with pytest.raises(ValueError, match="trained with the recognizer 'insightface:glintr100'"):
        train_ica.main(
            args_for(world, tmp_path / "out", "--max_steps", "1", "--adapter", str(tmp_path / "stage1_other"))
        )


def test_train_ica_flags_are_checked(world, tmp_path):
    base = ["--pretrained_model", str(world / "base"), *"--triplets t.jsonl --recognizer r.onnx".split()]
    base += ["--output_dir", str(tmp_path), "--max_steps", "2"]
    with pytest.raises(SystemExit):  # no stage-1 adapter
        train_ica.parse_args([*base, "--identity_loss_model", ID_MODEL, "--identity_loss_weight", "1"])
    with pytest.raises(SystemExit):  # no face recognizer
        train_ica.parse_args([*base, "--adapter", "a"])
    with pytest.raises(SystemExit):
        face = ["--identity_loss_model", ID_MODEL, "--identity_loss_weight", "1"]
        train_ica.parse_args([*base, "--adapter", "a", *face, "--ani_candidates", "1,x"])
