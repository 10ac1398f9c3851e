"""EmojiDiff img2img: restyle a start image while the identity and expression come from the EmojiDiff inputs.

    python examples/img2img.py --model path/or/hub-id --init photo.png --strength 0.6 \
        --identity_embeds me.npy --expression grin.png --expression_kps grin_kps.npy

`--model` is a saved EmojiDiff SDXL pipeline folder (any task's: the components are the same). `--expression_kps`
(a (5, 2) .npy of the template's landmarks) crops the template without a face analyzer.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch

from emojidiff_pipeline import EmojiDiffImg2ImgPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="EmojiDiff SDXL pipeline folder or Hub id")
    parser.add_argument("--init", required=True, help="start image")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="expression template image")
    parser.add_argument("--expression_kps", default=None, help=".npy (5, 2) landmarks of the template (optional)")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="img2img.png")
    args = parser.parse_args(argv)

    pipe = EmojiDiffImg2ImgPipeline.from_pretrained(args.model)
    init = PIL.Image.open(args.init).convert("RGB")
    images = pipe(
        args.prompt,
        image=init,  # the parent's arguments reach StableDiffusionXLImg2ImgPipeline unchanged
        strength=args.strength,
        identity_embeds=torch.as_tensor(np.load(args.identity_embeds), dtype=torch.float32).reshape(1, -1, 512),
        expression_image=PIL.Image.open(args.expression).convert("RGB"),
        expression_kps=np.load(args.expression_kps) if args.expression_kps else None,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images
    images[0].save(args.output)
    print(f"wrote {args.output}")
    return images


if __name__ == "__main__":
    main()
