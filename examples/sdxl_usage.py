"""Generate with a saved EmojiDiff pipeline folder (or Hub id) and an insightface model pack.

    python examples/sdxl_usage.py --model path/or/hub-id --identity me.jpg --expression grin.jpg \
        --face_root ~/.insightface --face_model antelopev2 --prompt "a watercolor portrait"

The model pack must already be at <face_root>/models/<face_model>/ (nothing is downloaded). insightface's
packs are licensed for non-commercial research only.
"""

from __future__ import annotations

import argparse

import PIL.Image
import torch

from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.face import FaceAnalyzer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--identity", nargs="+", required=True, help="one or more photos of the same person")
    parser.add_argument("--expression", required=True, help="expression template photo")
    parser.add_argument("--prompt", default="a portrait photo, studio light")
    parser.add_argument("--face_root", default="~/.insightface")
    parser.add_argument("--face_model", default="antelopev2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="emojidiff.png")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    pipe.set_face_analyzer(FaceAnalyzer(args.face_model, root=args.face_root))
    image = pipe(
        args.prompt,
        identity_image=[PIL.Image.open(p).convert("RGB") for p in args.identity],
        expression_image=PIL.Image.open(args.expression).convert("RGB"),
        identity_scale=1.0,
        expression_scale=1.0,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(args.seed),
    ).images[0]
    image.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
