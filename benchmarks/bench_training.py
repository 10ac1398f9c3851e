"""Training step time and peak memory: stage 1, stage 1 with the face losses, and ICA (stage 2), on the same model,
batch and cached inputs. Writes docs/training_benchmark.md.

    python benchmarks/bench_training.py [--model <pipeline folder>] [--adapter <adapter folder>] [--steps 20]

Default model and adapter: the shipped synthetic base and its embedded EmojiDiff adapter (code stream), with the
synthetic world's train-side differentiable face models for the face losses. Each set-up runs in its own process
(warm-up steps first, then timed steps), so its peak resident memory is its own. Timing excludes the one-off input
caching (see train/cache.py): the cache holds random stand-ins with the shapes and keypoints a real one has.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from emojidiff_pipeline.train.atomic import write_text_atomic

# set-up -> (expression branch on, Stage1Config overrides, FaceLossConfig or None)
SETUPS = {
    "identity-only adapter, stage 1": (False, {}, None),
    "EmojiDiff, stage 1": (True, {}, None),
    "EmojiDiff, stage 1 + face losses (expression 2, identity 0.5, t <= 600)": (
        True,
        {},
        dict(expression_weight=2.0, identity_weight=0.5, max_timestep=600),
    ),
    "EmojiDiff, ICA (expression 2, identity 1, alignment 1, t <= 500)": (
        True,
        {"max_train_timestep": 500},
        dict(expression_weight=2.0, identity_weight=1.0, alignment_weight=1.0, max_timestep=500),
    ),
    "EmojiDiff, ICA as shipped (expression 6, identity 1, no alignment, t <= 500)": (
        True,
        {"max_train_timestep": 500},
        dict(expression_weight=6.0, identity_weight=1.0, alignment_weight=0.0, max_timestep=500),
    ),
    "EmojiDiff, ICA as shipped, face losses on 16 rows of each batch": (
        True,
        {"max_train_timestep": 500},
        dict(expression_weight=6.0, identity_weight=1.0, alignment_weight=0.0, max_timestep=500, max_rows=16),
    ),
    "EmojiDiff, ICA as shipped, gradient checkpointing": (
        True,
        {"max_train_timestep": 500, "gradient_checkpointing": True},
        dict(expression_weight=6.0, identity_weight=1.0, alignment_weight=0.0, max_timestep=500),
    ),
}
REFERENCE = "EmojiDiff, stage 1"


def fake_cache(pipe, adapter, n: int, resolution: int) -> dict:
    """Random stand-ins with the shapes prepare_cache produces; keypoints at a face's usual place (the face losses
    warp the decoded images there)."""
    g = torch.Generator().manual_seed(0)
    h = resolution // pipe.vae_scale_factor
    text = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    kps = torch.tensor([[0.36, 0.42], [0.64, 0.42], [0.5, 0.56], [0.39, 0.7], [0.61, 0.7]]) * resolution
    cache = {
        "latents": torch.randn(n, pipe.unet.config.in_channels, h, h, generator=g),
        "identity": torch.nn.functional.normalize(
            torch.randn(n, 1, adapter.config.identity_embed_dim, generator=g), dim=-1
        ),
        "template_index": torch.arange(n),
        "prompt_embeds": torch.randn(n, 77, text, generator=g),
        "pooled": torch.randn(n, pipe.text_encoder_2.config.projection_dim, generator=g),
        "prompt_index": torch.arange(n),
        "add_time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32),
        "target_kps": kps.expand(n, 5, 2).clone(),
    }
    if adapter.uses_code_stream:
        cache["template_codes"] = torch.rand(n, adapter.config.expression_code_dim, generator=g)
    if adapter.uses_image_stream:
        vision = pipe.image_encoder.config
        patches = (vision.image_size // vision.patch_size) ** 2 + 1
        cache["templates"] = torch.randn(n, patches, vision.hidden_size, generator=g)
    return cache


def run_setup(args) -> dict:
    """One set-up in this process: seconds per timed step and peak resident memory (MiB)."""
    from accelerate import Accelerator

    from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
    from emojidiff_pipeline.train.face_losses import FaceLossConfig
    from emojidiff_pipeline.train.stage1 import Stage1Config, train_stage1
    from emojidiff_synthetic.load import train_expression_loss_model, train_identity_loss_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with_expression, overrides, face = SETUPS[args.setup]
    pipe = EmojiDiffPipeline.from_pretrained(args.model)
    adapter = EmojiDiffAdapter.from_pretrained(args.adapter)
    if not with_expression:
        kept = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
        adapter = EmojiDiffAdapter.from_unet(
            pipe.unet, **{**kept, "identity_layers": list(adapter.identity_layer_names), "expression_layers": "none"}
        )
    cache = fake_cache(pipe, adapter, 256, args.resolution)
    models = (train_expression_loss_model(), train_identity_loss_model()) if face else (None, None)
    common = dict(
        batch_size=args.batch_size,
        checkpointing_steps=10**9,
        face_loss_weight=6.0,
        face_losses=FaceLossConfig(**face) if face else None,
        **overrides,
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = Stage1Config(max_steps=args.warmup + args.steps, **common)
        train_stage1(Accelerator(cpu=True), pipe, adapter, cache, config, Path(tmp), None, *models)
        log = [json.loads(line) for line in (Path(tmp) / "loss_log.jsonl").read_text().splitlines()]
    # the loop's own per-step clock: the timed steps only, not the set-up before the loop (model moves, the face
    # losses' one read of the targets) nor the warm-up steps
    elapsed = {r["step"]: r["elapsed_s"] for r in log}
    seconds = elapsed[args.warmup + args.steps - 1] - elapsed[args.warmup - 1]
    return {
        "s_per_step": seconds / args.steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def summarize(runs: list[dict], reference: list[dict]) -> dict:
    """One set-up's passes: the median s/step, the max peak memory, and its ratio to the reference set-up's step
    within each pass (median, min, max)."""
    ratios = [r["s_per_step"] / ref["s_per_step"] for r, ref in zip(runs, reference)]
    return {
        "s_per_step": float(np.median([r["s_per_step"] for r in runs])),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "ratio": float(np.median(ratios)),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main(argv=None) -> None:
    from emojidiff_synthetic.load import BASE_DIR, EMOJIDIFF_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BASE_DIR))
    parser.add_argument("--adapter", default=str(EMOJIDIFF_DIR / "emoji_adapter"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="passes over all set-ups, interleaved (a busy machine drifts)"
    )
    parser.add_argument("--output", default="docs/training_benchmark.md")
    parser.add_argument("--setup", choices=list(SETUPS), help=argparse.SUPPRESS)  # a child process: one set-up
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1:
        parser.error(
            f"--warmup, --steps and --repeats must be >= 1 (the clock starts after a warm-up step), got "
            f"{args.warmup}, {args.steps} and {args.repeats}."
        )
    if args.setup:
        print(json.dumps(run_setup(args)))
        return
    runs = {name: [] for name in SETUPS}  # per set-up, one result per pass; passes interleave the set-ups
    for _ in range(args.repeats):
        for name in SETUPS:
            child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--setup", name]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"set-up {name!r} failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    results = {name: summarize(r, runs[REFERENCE]) for name, r in runs.items()}
    lines = [
        "# Training step time and peak memory",
        "",
        f"Written by `python benchmarks/bench_training.py --steps {args.steps} --batch_size {args.batch_size} "
        f"--repeats {args.repeats}` (do not edit by hand).",
        "",
        f"Model: `{Path(args.model).name}` with the adapter `{Path(args.adapter).name}` at {args.resolution}x"
        f"{args.resolution}, batch {args.batch_size}, face-weighted diffusion loss (6), {platform.machine()} CPU, "
        f"{args.threads} torch threads, torch {torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps "
        "per set-up, each in its own process, timed by the training loop's own per-step clock (peak memory: its "
        f"resident set). Inputs cached (no encoders in the loop). {args.repeats} passes over the set-ups in turn: "
        "s / step is the median over the passes, the ratio to a stage-1 step the median of each pass's own ratio "
        "(its range in brackets).",
        "",
        "| set-up | s / step | samples / s | x stage-1 step [range] | peak memory (MiB) |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {k} | {v['s_per_step']:.3f} | {args.batch_size / v['s_per_step']:.1f} | {v['ratio']:.2f} "
            f"[{v['ratio_min']:.2f}-{v['ratio_max']:.2f}] | {v['peak_rss_mib']:.0f} |"
            for k, v in results.items()
        ],
        "",
        "ICA's step runs the UNet twice (expression branch on, and off without gradients, from the same noise), "
        "decodes the one-step x0 with the VAE and reads it with the face models (the targets' expression and "
        "identity are read once per run, before the loop); the face losses of stage 1 do the same without the "
        "second UNet pass, on the rows with t <= their bound only. ICA as "
        "shipped (docs/results/experiments/ica_no_alignment) has no alignment term, so it skips the second pass, "
        "but all of its rows have t <= the bound, so every row is decoded and read, unless `--face_loss_rows` caps "
        "them (16 rows: half of a batch of 32; its quality: docs/results/experiments/ica_face_rows16). Gradient "
        "checkpointing (the "
        "UNet's and the VAE decoder's blocks recomputed in the backward pass) is the memory option for SDXL at 1024 "
        "px (docs/ica_memory.md); at 64 px it only costs time. The issue's target for ICA: <= 2.5x a stage-1 step.",
        "",
    ]
    write_text_atomic(Path(args.output), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
