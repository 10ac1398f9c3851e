"""Drop EmojiDiff onto an SDXL pipeline you already have: same UNet, VAE, text encoders, LoRAs and scheduler.

    python examples/drop_in.py --sdxl stabilityai/stable-diffusion-xl-base-1.0 --adapter path/to/emoji_adapter \
        --image_encoder path/to/clip-vision --lora path/to/style_lora --identity_embeds me.npy --expression grin.png

`from_pipe` shares the existing components (no copies); unloading the adapter restores the UNet's processors.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from emojidiff_pipeline import EmojiDiffAdapter, EmojiDiffPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl", required=True, help="SDXL pipeline folder or Hub id")
    parser.add_argument("--adapter", required=True, help="EmojiDiffAdapter folder or Hub id")
    parser.add_argument("--image_encoder", required=True, help="CLIP vision folder (with preprocessor_config.json)")
    parser.add_argument("--lora", default=None)
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--identity_scale", type=float, default=1.0)
    parser.add_argument("--expression_scale", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--output", default="drop_in.png")
    args = parser.parse_args(argv)

    sdxl = StableDiffusionXLPipeline.from_pretrained(args.sdxl)
    sdxl.scheduler = DPMSolverMultistepScheduler.from_config(sdxl.scheduler.config)
    if args.lora:
        sdxl.load_lora_weights(args.lora)
    pipe = EmojiDiffPipeline.from_pipe(
        sdxl,
        emoji_adapter=EmojiDiffAdapter.from_pretrained(args.adapter),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(args.image_encoder),
        feature_extractor=CLIPImageProcessor.from_pretrained(args.image_encoder),
    )
    embeds = torch.as_tensor(np.load(args.identity_embeds), dtype=torch.float32).reshape(1, -1, 512)
    images = pipe(
        args.prompt,
        identity_embeds=embeds,
        expression_image=PIL.Image.open(args.expression).convert("RGB"),
        identity_scale=args.identity_scale,
        expression_scale=args.expression_scale,  # or a per-block dict: {"up": {"block_0": [1.0, 0.0, 1.0]}}
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images
    images[0].save(args.output)
    print(f"wrote {args.output}")
    return images


if __name__ == "__main__":
    main()
