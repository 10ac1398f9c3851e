"""EmojiDiff on Stable Diffusion 1.5: an SD1.5 pipeline you already have + an adapter built for its UNet.

    python examples/sd15.py --sd15 stable-diffusion-v1-5/stable-diffusion-v1-5 --adapter path/to/sd15_adapter \
        --image_encoder path/to/clip-vision --identity_embeds me.npy --expression grin.png

An SD1.5 adapter is `EmojiDiffAdapter.from_unet(sd15.unet)` (cross-attention dim 768), trained like the SDXL one.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from emojidiff_pipeline import EmojiDiffStableDiffusionPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd15", required=True, help="SD1.5 pipeline folder or Hub id")
    parser.add_argument("--adapter", required=True, help="EmojiDiffAdapter folder or Hub id (built for SD1.5)")
    parser.add_argument("--image_encoder", required=True, help="CLIP vision folder (with preprocessor_config.json)")
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="sd15.png")
    args = parser.parse_args(argv)

    sd15 = StableDiffusionPipeline.from_pretrained(args.sd15)
    pipe = EmojiDiffStableDiffusionPipeline.from_pipe(
        sd15,
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(args.image_encoder),
        feature_extractor=CLIPImageProcessor.from_pretrained(args.image_encoder),
    )
    pipe.load_emoji_adapter(args.adapter)
    images = pipe(
        args.prompt,
        identity_embeds=torch.as_tensor(np.load(args.identity_embeds), dtype=torch.float32).reshape(1, -1, 512),
        expression_image=PIL.Image.open(args.expression).convert("RGB"),
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images
    images[0].save(args.output)
    print(f"wrote {args.output}")
    return images


if __name__ == "__main__":
    main()
