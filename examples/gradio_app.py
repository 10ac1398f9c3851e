"""Gradio demo for a Hugging Face Space: identity photo + expression template + prompt -> portrait.

    pip install gradio "emojidiff_pipeline[face]" && pip install --no-deps insightface==2.1
    EMOJIDIFF_MODEL=<pipeline folder or Hub id> INSIGHTFACE_ROOT=~/.insightface python examples/gradio_app.py
"""

from __future__ import annotations

import os

import torch

from emojidiff_pipeline import EmojiDiffPipeline
from emojidiff_pipeline.face import FaceAnalyzer


def build_pipeline() -> EmojiDiffPipeline:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(os.environ["EMOJIDIFF_MODEL"], torch_dtype=dtype).to(device)
    pipe.set_face_analyzer(
        FaceAnalyzer(os.environ.get("INSIGHTFACE_MODEL", "antelopev2"), root=os.environ.get("INSIGHTFACE_ROOT", "~/.insightface"))
    )
    return pipe


def main() -> None:
    import gradio as gr  # only the demo needs it

    pipe = build_pipeline()

    def generate(identity, expression, prompt, identity_scale, expression_scale, steps, seed):
        if identity is None or expression is None:
            raise gr.Error("Upload an identity photo and an expression template.")
        try:
            return pipe(
                prompt,
                identity_image=identity,
                expression_image=expression,
                identity_scale=identity_scale,
                expression_scale=expression_scale,
                num_inference_steps=int(steps),
                generator=torch.Generator("cpu").manual_seed(int(seed)),
            ).images[0]
        except ValueError as err:  # no face, bad input: show the message, not a traceback
            raise gr.Error(str(err)) from err

    demo = gr.Interface(
        fn=generate,
        inputs=[
            gr.Image(type="pil", label="Identity photo"),
            gr.Image(type="pil", label="Expression template"),
            gr.Textbox(value="a portrait photo, soft light", label="Prompt"),
            gr.Slider(0.0, 1.5, value=1.0, label="Identity scale"),
            gr.Slider(0.0, 1.5, value=1.0, label="Expression scale"),
            gr.Slider(4, 50, value=30, step=1, label="Steps"),
            gr.Number(value=0, label="Seed"),
        ],
        outputs=gr.Image(label="Portrait"),
        title="EmojiDiff: copy an expression, keep the identity",
    )
    demo.launch()


if __name__ == "__main__":
    main()
