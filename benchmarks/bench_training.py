"""Stage-1 training throughput (samples/s): EmojiDiff (identity + expression branches) vs an identity-only adapter
on the same model, same batch, same cached inputs. Writes docs/training_benchmark.md.

    python benchmarks/bench_training.py [--model <pipeline folder>] [--steps 30] [--batch_size 16]

Default model: the shipped synthetic base. Timing excludes the one-off input caching (see stage1.prepare_cache).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch


def fake_cache(pipe, adapter_cfg, n: int, resolution: int) -> dict:
    """Random stand-ins with the shapes prepare_cache produces (the loop does not care about content)."""
    g = torch.Generator().manual_seed(0)
    h = resolution // pipe.vae_scale_factor
    text = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    vision = pipe.image_encoder.config
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    return {
        "latents": torch.randn(n, pipe.unet.config.in_channels, h, h, generator=g),
        "identity": torch.nn.functional.normalize(torch.randn(n, 1, 512, generator=g), dim=-1),
        "templates": torch.randn(n, patches, vision.hidden_size, generator=g),
        "template_index": torch.arange(n),
        "prompt_embeds": torch.randn(n, 77, text, generator=g),
        "pooled": torch.randn(n, pipe.text_encoder_2.config.projection_dim, generator=g),
        "prompt_index": torch.arange(n),
        "add_time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32),
    }


def main(argv=None) -> None:
    from accelerate import Accelerator

    from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline
    from emojidiff_pipeline.train.stage1 import Stage1Config, train_stage1
    from emojidiff_synthetic.load import BASE_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BASE_DIR))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--output", default="docs/training_benchmark.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe = EmojiDiffPipeline.from_pretrained(args.model)
    width = pipe.image_encoder.config.hidden_size
    setups = {
        "EmojiDiff (identity all + expression preset)": dict(expression_layers="expression_sensitive"),
        "identity-only adapter": dict(expression_layers="none"),
    }
    results = {}
    for name, layers in setups.items():
        torch.manual_seed(0)
        adapter = EmojiDiffAdapter.from_unet(pipe.unet, identity_layers="all", image_embed_dim=width,
                                             resampler_dim=width, resampler_heads=max(1, width // 64),
                                             num_expression_tokens=16, **layers)  # fmt: skip
        cache = fake_cache(pipe, adapter.config, 256, args.resolution)
        with tempfile.TemporaryDirectory() as tmp:
            config = Stage1Config(max_steps=args.warmup, batch_size=args.batch_size, checkpointing_steps=10**9)
            train_stage1(Accelerator(cpu=True), pipe, adapter, cache, config, Path(tmp))  # warm-up
            config = Stage1Config(max_steps=args.warmup + args.steps, batch_size=args.batch_size,
                                  checkpointing_steps=10**9, overwrite_output_dir=True)  # fmt: skip
            start = time.perf_counter()
            train_stage1(Accelerator(cpu=True), pipe, adapter, cache, config, Path(tmp))
            seconds = time.perf_counter() - start
        results[name] = args.batch_size * (args.warmup + args.steps) / seconds
    emoji, plain = results.values()
    lines = [
        "# Stage-1 training throughput", "",
        f"Written by `python benchmarks/bench_training.py --steps {args.steps} --batch_size {args.batch_size}` "
        "(do not edit by hand).", "",
        f"Model: `{Path(args.model).name}` at {args.resolution}x{args.resolution}, batch {args.batch_size}, "
        f"{platform.machine()} CPU, 2 torch threads, torch {torch.__version__}. Inputs cached (no encoders in the "
        "loop); each set-up warmed up first.", "",
        "| set-up | samples / s |", "| --- | --- |",
        *[f"| {k} | {v:.1f} |" for k, v in results.items()], "",
        f"ratio (EmojiDiff / identity-only): {emoji / plain:.2f}", "",
    ]  # fmt: skip
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
