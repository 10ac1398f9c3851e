"""EmojiDiff beside diffusers' IP-Adapter (e.g. a style IP-Adapter, InstantStyle-like, plus the face adapter).

    python examples/with_ip_adapter.py --model path/or/hub-id --ip_adapter h94/IP-Adapter --subfolder sdxl_models \
        --weight_name ip-adapter_sdxl.safetensors --style style.png --ip_scale 0.6 \
        --identity_embeds me.npy --expression grin.png

Both load orders work; `pipe.unload_ip_adapter()` leaves EmojiDiff working and `pipe.unload_emoji_adapter()` leaves
the IP-Adapter working. The IP-Adapter uses the pipeline's `image_encoder` when it has one.
"""

from __future__ import annotations

import argparse

import numpy as np
import PIL.Image
import torch

from emojidiff_pipeline import EmojiDiffPipeline


def main(argv=None) -> list[PIL.Image.Image]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="EmojiDiff SDXL pipeline folder or Hub id")
    parser.add_argument("--ip_adapter", required=True, help="IP-Adapter folder or Hub id")
    parser.add_argument("--subfolder", default="")
    parser.add_argument("--weight_name", required=True)
    parser.add_argument("--style", required=True, help="image prompt for the IP-Adapter")
    parser.add_argument("--ip_scale", type=float, default=0.6)
    parser.add_argument("--identity_embeds", required=True, help=".npy of normed face embeddings (n_ref, 512)")
    parser.add_argument("--expression", required=True, help="aligned expression template image")
    parser.add_argument("--prompt", default="a portrait")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--output", default="with_ip_adapter.png")
    args = parser.parse_args(argv)

    pipe = EmojiDiffPipeline.from_pretrained(args.model)
    pipe.load_ip_adapter(
        args.ip_adapter,
        subfolder=args.subfolder,
        weight_name=args.weight_name,
        image_encoder_folder=None if pipe.image_encoder is not None else "image_encoder",
    )
    pipe.set_ip_adapter_scale(args.ip_scale)  # or InstantStyle's per-block dict {"up": {"block_0": [0, 1, 0]}}
    images = pipe(
        args.prompt,
        ip_adapter_image=PIL.Image.open(args.style).convert("RGB"),
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
