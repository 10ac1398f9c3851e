"""Gradio demo (what `make app` runs; also a Hugging Face Space's app.py): identity photos + expression template +
prompt -> portrait.

With no arguments it serves the embedded synthetic default with clickable examples (`emojidiff-synthetic app`;
needs the synthetic package). With --model (or EMOJIDIFF_MODEL) it serves a real EmojiDiff pipeline folder or Hub
id with an insightface pack (`emojidiff app`):

    pip install "emojidiff_pipeline[app,face]" && pip install --no-deps insightface==2.1
    EMOJIDIFF_MODEL=<pipeline folder or Hub id> INSIGHTFACE_ROOT=~/.insightface python examples/gradio_app.py
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    argv = sys.argv[1:]
    if any(a == "--model" or a.startswith("--model=") for a in argv) or os.environ.get("EMOJIDIFF_MODEL"):
        from emojidiff_pipeline.app import main

        sys.exit(main(argv, prog="gradio_app.py"))
    from emojidiff_synthetic.demo import main

    sys.exit(main(["app", *argv]))
