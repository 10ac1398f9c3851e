"""What ICA's face losses add to a stage-1 step's memory on SDXL: the VAE decoder run with gradients on the one-step
x0, with and without gradient checkpointing (``--gradient_checkpointing`` of the stage scripts). Writes
docs/ica_memory.md.

    python benchmarks/bench_ica_memory.py [--sizes 256,512] [--output docs/ica_memory.md]

The decoder is SDXL's architecture (``SDXL_VAE_CONFIG``: the published sdxl-vae config) with random weights: memory
depends on the architecture, not the weights, and no weights can be downloaded here. Each (size, checkpointing)
runs in its own process, batch 1, fp32 on the CPU: one decode of a latent that requires grad, a scalar of the image,
backward. Memory: the process's peak resident set minus its resident set before the decode (the weights and the
interpreter), so it is what the decode and its backward hold at their peak. The face models' own crops (112 px) and
the second UNet pass of the alignment term are small next to it and not included.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from emojidiff_pipeline.train.atomic import write_text_atomic

# madebyollin/sdxl-vae-fp16-fix and stabilityai/sdxl-vae share this architecture (their config.json)
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(size: int, checkpointing: bool) -> dict:
    """Peak MiB above the loaded model, and the decode + backward's seconds, for one image of `size` px."""
    import time

    from diffusers import AutoencoderKL

    from emojidiff_pipeline.train.face_losses import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG).requires_grad_(False)
    if checkpointing:
        vae.enable_gradient_checkpointing()
    factor = 2 ** (len(SDXL_VAE_CONFIG["block_out_channels"]) - 1)
    latents = torch.randn(1, 4, size // factor, size // factor, requires_grad=True)
    before = current_rss_mib()
    start = time.perf_counter()
    image = decode_latents(vae, latents)
    image.square().mean().backward()
    seconds = time.perf_counter() - start
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_above_model_mib": peak - before, "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512", help="comma-separated image sizes (px)")
    parser.add_argument("--output", default="docs/ica_memory.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "<size>,<0|1>": one measurement in this process
    args = parser.parse_args(argv)
    if args.child:
        size, checkpointing = (int(v) for v in args.child.split(","))
        print(json.dumps(measure(size, bool(checkpointing))))
        return
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes comma-separated ints, got {args.sizes!r}")
    if any(s < 64 or s % 64 for s in sizes):
        parser.error(f"--sizes must be multiples of 64 (>= 64), got {sizes}")
    rows = {}
    for size in sizes:
        for checkpointing in (0, 1):
            child = [sys.executable, __file__, "--child", f"{size},{checkpointing}"]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"size {size}, checkpointing {checkpointing} failed:\n{done.stderr[-3000:]}")
            rows[size, checkpointing] = json.loads(done.stdout.strip().splitlines()[-1])
            print(size, checkpointing, rows[size, checkpointing], flush=True)
    largest = max(sizes)
    scale = (1024 / largest) ** 2
    lines = [
        "# ICA's memory on SDXL: the VAE decoder with gradients",
        "",
        f"Written by `python benchmarks/bench_ica_memory.py --sizes {args.sizes}` (do not edit by hand).",
        "",
        f"SDXL's VAE architecture (random weights), batch 1, fp32, {platform.machine()} CPU, torch "
        f"{torch.__version__}: one decode of a latent that requires grad and its backward, each in its own "
        "process. Memory is the peak resident set above the loaded model.",
        "",
        "| image size | gradient checkpointing | peak memory above the model (MiB) | seconds (decode + backward) |",
        "| --- | --- | --- | --- |",
        *[
            f"| {s} px | {'yes' if c else 'no'} | {r['peak_above_model_mib']:.0f} | {r['seconds']:.1f} |"
            for (s, c), r in rows.items()
        ],
        "",
        f"At 1024 px (not run here: a CPU decode with gradients at that size takes minutes) the decoder's "
        f"activations scale with the pixel count except the mid-block attention over the 128x128 latent, so "
        f"{scale:.0f}x the {largest} px line is a floor: about "
        f"{rows[largest, 0]['peak_above_model_mib'] * scale / 1024:.1f} GiB per image without checkpointing and "
        f"{rows[largest, 1]['peak_above_model_mib'] * scale / 1024:.1f} GiB with it, in fp32 (mixed precision, "
        "`--mixed_precision`, keeps 16-bit activations where autocast applies: not measured here). This comes "
        "on top of a stage-1 step at the same batch (the UNet with the "
        "adapter, which `--gradient_checkpointing` also checkpoints), once per image of the batch: at 1024 px use "
        "`--gradient_checkpointing`, mixed precision and a per-device batch of 1-2 with accelerate processes for "
        "the global batch.",
        "",
    ]
    write_text_atomic(Path(args.output), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
