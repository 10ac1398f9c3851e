"""Load EmojiDiff the diffusers way: a saved EmojiDiff folder through `DiffusionPipeline.from_pretrained`, or an
adapter onto any SDXL pipeline through `load_emoji_adapter`.

    python examples/from_hub.py --model user/emojidiff-sdxl --identity_embeds me.npy --expression grin.png
    python examples/from_hub.py --sdxl stabilityai/stable-diffusion-xl-base-1.0 --adapter user/emojidiff-sdxl \
        --subfolder emoji_adapter --image_encoder path/to/clip-vision --identity_embeds me.npy --expression grin.png

`import emojidiff_pipeline` is what lets diffusers resolve the EmojiDiff classes named in model_index.json.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline

import emojidiff_pipeline  # noqa: F401  (announces the EmojiDiff pipeline classes to diffusers)


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved EmojiDiff pipeline folder or Hub id")
    parser.add_argument("--sdxl", default=None, help="or: a plain SDXL pipeline folder or Hub id ...")
    parser.add_argument("--adapter", default=None, help="... plus an adapter folder or Hub id")
    parser.add_argument("--subfolder", default=None, help="the adapter's subfolder, e.g. emoji_adapter")
    parser.add_argument("--image_encoder", default=None, help="CLIP vision folder, with --sdxl")
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait photo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="from_hub.png")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.sdxl is None) or (args.sdxl is not None) != (args.adapter is not None):
        parser.error("give either --model, or --sdxl with --adapter")

    dtype = torch.float16 if torch.cuda.is_available() else torch.float32
    if args.model is not None:
        pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    else:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from emojidiff_pipeline import EmojiDiffPipeline

        extra = {}
        if args.image_encoder:
            extra = dict(
                image_encoder=CLIPVisionModelWithProjection.from_pretrained(args.image_encoder),
                feature_extractor=CLIPImageProcessor.from_pretrained(args.image_encoder),
            )
        pipe = EmojiDiffPipeline.from_pretrained(args.sdxl, torch_dtype=dtype, **extra)
        pipe.load_emoji_adapter(args.adapter, subfolder=args.subfolder)  # follows the UNet's dtype and device
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
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
