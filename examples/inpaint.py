"""EmojiDiff inpainting: repaint the masked region (e.g. the face) with the identity and the template's expression.

    python examples/inpaint.py --model path/or/hub-id --image photo.png --mask face_mask.png \
        --identity_embeds me.npy --expression grin.png

The inpainting mask (white = repaint) is diffusers'; `--expression_mask` (optional) further limits where the
expression branch acts.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch

from emojidiff_pipeline import EmojiDiffInpaintPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="EmojiDiff SDXL pipeline folder or Hub id")
    parser.add_argument("--image", required=True)
    parser.add_argument("--mask", required=True, help="inpainting mask, white = repaint")
    parser.add_argument("--expression_mask", default=None, help="where the expression branch acts (optional)")
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="inpaint.png")
    args = parser.parse_args(argv)

    pipe = EmojiDiffInpaintPipeline.from_pretrained(args.model)
    image = PIL.Image.open(args.image).convert("RGB")
    images = pipe(
        args.prompt,
        image=image,
        mask_image=PIL.Image.open(args.mask).convert("L"),
        height=image.height,
        width=image.width,
        identity_embeds=torch.as_tensor(np.load(args.identity_embeds), dtype=torch.float32).reshape(1, -1, 512),
        expression_image=PIL.Image.open(args.expression).convert("RGB"),
        expression_mask=PIL.Image.open(args.expression_mask) if args.expression_mask else None,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images
    images[0].save(args.output)
    print(f"wrote {args.output}")
    return images


if __name__ == "__main__":
    main()
