"""Stage-1 training script at tiny scale: checkpoints, exact resume, triplet manifests, 2-process CPU run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from face_standins import make_arcface_standin
from tiny_models import tiny_components, write_tiny_collection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
from emojidiff_pipeline.train.triplets import read_triplets, same_identity_triplets

pytest.importorskip("accelerate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
import train_decoupled  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    EmojiDiffPipeline(**tiny_components()).save_pretrained(root / "base")
    make_arcface_standin(root / "arcface.onnx", seed=1)
    write_tiny_collection(root, num_identities=3, photos_per_identity=3)
    return root


def args_for(world, out, *extra):
    folders = ["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")]
    folders += ["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(out)]
    sizes = "--resolution 64 --batch_size 2 --checkpointing_steps 2 --learning_rate 1e-3 --resampler_depth 1"
    sizes += " --num_expression_tokens 4"
    return train_decoupled.parse_args([*folders, *sizes.split(), *extra])


def test_same_identity_triplets(world):
    records = [json.loads(x) for x in (world / "train.jsonl").read_text().splitlines()]
    triplets = same_identity_triplets(records, world, num_references=2)
    assert len(triplets) == 9
    for t in triplets:
        assert t.template == t.target and t.target not in t.references and len(t.references) == 2
        assert {Path(p).parent.name for p in t.references} == {Path(t.target).parent.name}
        assert t.template_kps is not None and len(t.reference_kps) == 2


def test_train_checkpoints_and_exact_resume(world, tmp_path):
    full = train_decoupled.main(args_for(world, tmp_path / "full", "--max_steps", "4"))
    assert len(full) == 4 and all(np.isfinite(full))
    for step in (2, 4):
        adapter = EmojiDiffAdapter.from_pretrained(tmp_path / "full" / f"checkpoint-{step}" / "adapter")
        assert adapter.config.num_expression_tokens == 4
    final = EmojiDiffAdapter.from_pretrained(tmp_path / "full" / "adapter")
    start = EmojiDiffAdapter.from_pretrained(tmp_path / "full" / "checkpoint-2" / "adapter")
    assert any((a - b).abs().max() > 0 for a, b in zip(final.state_dict().values(), start.state_dict().values()))

    first = train_decoupled.main(args_for(world, tmp_path / "split", "--max_steps", "2"))
    resumed = train_decoupled.main(
        args_for(world, tmp_path / "split", "--max_steps", "4", "--resume_from_checkpoint", "latest")
    )
    assert first + resumed == full  # bit-identical losses
    log = [json.loads(x) for x in (tmp_path / "split" / "loss_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [0, 1, 2, 3] and [x["loss"] for x in log] == full


def test_mixed_precision_autocasts_the_frozen_unet_too(world, tmp_path, monkeypatch):
    """--mixed_precision bf16: the training forward of the frozen UNet runs under autocast, not only the prepared
    adapter's, and the losses stay finite."""
    from diffusers import UNet2DConditionModel

    seen, forward = [], UNet2DConditionModel.forward

    def recording_forward(self, *args, **kwargs):
        if torch.is_grad_enabled():  # the training step (validation runs without gradients)
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    from accelerate.state import AcceleratorState

    monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
    AcceleratorState._reset_state(reset_partial_state=True)  # the state is a per-process singleton: no precision yet
    try:
        losses = train_decoupled.main(
            args_for(world, tmp_path / "bf16", "--max_steps", "2", "--mixed_precision", "bf16")
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # the other tests' runs take "no" again
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert seen == [torch.bfloat16, torch.bfloat16]


def test_bad_manifest_and_args(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"template": "x.png", "references": [], "target": "y.png", "prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: `references` must be a non-empty list"):
        read_triplets(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        read_triplets(bad)
    with pytest.raises(SystemExit):
        args_for(world, tmp_path, "--max_steps", "2", "--identity_drop", "1.5")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train_decoupled.main(
            args_for(world, tmp_path / "none", "--max_steps", "2", "--resume_from_checkpoint", "latest")
        )


def test_two_process_cpu_run(world, tmp_path):
    launch = "--multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"
    launch += " --main_process_port 29517"
    folders = ["--pretrained_model", str(world / "base"), "--same_identity_from", str(world / "train.jsonl")]
    folders += ["--recognizer", str(world / "arcface.onnx"), "--output_dir", str(tmp_path / "ddp")]
    sizes = "--resolution 64 --batch_size 1 --max_steps 2 --checkpointing_steps 2 --resampler_depth 1"
    sizes += " --learning_rate 1e-3 --num_expression_tokens 4"
    script = str(REPO / "training" / "train_decoupled.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch.split(), script, *folders, *sizes.split()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    EmojiDiffAdapter.from_pretrained(tmp_path / "ddp" / "adapter")
    log = [json.loads(x) for x in (tmp_path / "ddp" / "loss_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [0, 1]
    assert json.loads((tmp_path / "ddp" / "run_info.json").read_text())["num_processes"] == 2
    # two processes with batch 1 train like one process with batch 2
    single = train_decoupled.main(args_for(world, tmp_path / "single", "--max_steps", "2", "--batch_size", "2"))
    np.testing.assert_allclose([x["loss"] for x in log], single, rtol=1e-4)


def test_v_prediction_euler_base_trains_on_ddpm_noise(tmp_path):
    """A base that ships an Euler v-prediction sampler (like the synthetic world's) trains with DDPM-scaled noise."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    from emojidiff_pipeline.train.diffusion import diffusion_target, training_noise_scheduler

    components = tiny_components()
    components["scheduler"] = EulerDiscreteScheduler.from_config(
        components["scheduler"].config, prediction_type="v_prediction", timestep_spacing="trailing"
    )
    scheduler = training_noise_scheduler(components["scheduler"])
    assert isinstance(scheduler, DDPMScheduler) and scheduler.config.prediction_type == "v_prediction"
    x0, noise, t = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), torch.tensor([0, 999])
    a = scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    assert torch.allclose(scheduler.add_noise(x0, noise, t), a.sqrt() * x0)  # not x0 + sigma * noise
    assert torch.allclose(diffusion_target(scheduler, x0, noise, t), -(1 - a).sqrt() * x0)

    root = tmp_path / "world"
    EmojiDiffPipeline(**components).save_pretrained(root / "base")
    make_arcface_standin(root / "arcface.onnx", seed=1)
    write_tiny_collection(root, num_identities=2, photos_per_identity=3)
    losses = train_decoupled.main(args_for(root, tmp_path / "out", "--max_steps", "2"))
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_face_weighted_loss_weights_and_keypoint_sources(world, tmp_path):
    from emojidiff_pipeline.face import FaceAnalyzer
    from emojidiff_pipeline.train.cache import target_keypoints
    from emojidiff_pipeline.train.diffusion import face_loss_weights
    from emojidiff_pipeline.train.triplets import Triplet, write_triplets

    kps = torch.tensor([[[20.0, 24.0], [44.0, 24.0], [32.0, 34.0], [24.0, 44.0], [40.0, 44.0]]])
    w = face_loss_weights(kps, (16, 16), 64, face_weight=4.0)
    assert w.shape == (1, 1, 16, 16) and w.min() >= 1.0 and w.max() <= 5.0
    assert w[0, 0, 6, 5] > 4.5 and w[0, 0, 0, 0] < 1.01  # on the left eye (x 20, y 24) vs a corner
    assert torch.allclose(face_loss_weights(kps, (16, 16), 64, 0.0), torch.ones(1, 1, 16, 16))

    records = [json.loads(x) for x in (world / "train.jsonl").read_text().splitlines()]
    same = same_identity_triplets(records, world, num_references=1)[:2]  # target == template: its keypoints
    assert torch.allclose(target_keypoints(None, same, 64)[0], torch.tensor(same[0].template_kps, dtype=torch.float32))
    cross = Triplet(
        same[1].template,
        same[1].references,
        same[0].target,
        "p",
        same[1].template_kps,
        same[1].reference_kps,
        target_kps=same[0].template_kps,
    )
    write_triplets([cross], tmp_path / "t.jsonl")
    assert read_triplets(tmp_path / "t.jsonl")[0].target_kps == cross.target_kps  # round trip
    assert torch.allclose(target_keypoints(None, [cross], 32)[0], torch.tensor(cross.target_kps) / 2)
    cross.target_kps = None
    with pytest.raises(ValueError, match="target_kps"):  # no known keypoints and no detector
        target_keypoints(FaceAnalyzer.from_models(lambda image: [], str(world / "arcface.onnx")), [cross], 64)

    losses = train_decoupled.main(
        args_for(world, tmp_path / "weighted", "--max_steps", "2", "--face_loss_weight", "4")
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    with pytest.raises(SystemExit):
        args_for(world, tmp_path / "bad", "--max_steps", "2", "--face_loss_weight", "-1")
