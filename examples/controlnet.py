"""EmojiDiff with SDXL ControlNet: pose or edges from control images, identity and expression from EmojiDiff.

    python examples/controlnet.py --model path/or/hub-id --controlnet diffusers/controlnet-canny-sdxl-1.0 \
        --control_image edges.png --identity_embeds me.npy --expression grin.png

Give several `--controlnet` / `--control_image` pairs (and `--scale` per ControlNet) for a multi-ControlNet.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch
from diffusers import ControlNetModel

from emojidiff_pipeline import EmojiDiffControlNetPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="EmojiDiff SDXL pipeline folder or Hub id")
    parser.add_argument("--controlnet", nargs="+", required=True, help="SDXL ControlNet folder(s) or Hub id(s)")
    parser.add_argument("--control_image", nargs="+", required=True, help="one control image per ControlNet")
    parser.add_argument("--scale", nargs="+", type=float, default=None, help="conditioning scale per ControlNet")
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="controlnet.png")
    args = parser.parse_args(argv)
    if len(args.controlnet) != len(args.control_image):
        parser.error(
            f"give one --control_image per --controlnet ({len(args.controlnet)} vs {len(args.control_image)})"
        )

    controlnets = [ControlNetModel.from_pretrained(path) for path in args.controlnet]
    pipe = EmojiDiffControlNetPipeline.from_pretrained(
        args.model, controlnet=controlnets[0] if len(controlnets) == 1 else controlnets
    )
    control = [PIL.Image.open(p).convert("RGB") for p in args.control_image]
    scale = args.scale or [1.0] * len(control)
    images = pipe(
        args.prompt,
        image=control[0] if len(control) == 1 else control,
        controlnet_conditioning_scale=scale[0] if len(scale) == 1 else scale,
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
