"""The README's screenshot of the app (docs/app.png): the embedded default served, one example identity and template
clicked, Generate, the page captured in headless Chromium.

    python synthetic/scripts/app_screenshot.py --output docs/app.png [--identity 0 --template 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="docs/app.png")
    p.add_argument("--identity", type=int, default=0, help="which example identity to click")
    p.add_argument("--template", type=int, default=1, help="which example template to click (1: laugh)")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    import emojidiff_synthetic.app as app
    from emojidiff_pipeline.app import ELEM_IDS, launch
    from emojidiff_synthetic.browser import headless_chromium, missing_browser, output_src, pick_examples

    if missing_browser():
        p.error(missing_browser())
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        demo, examples_dir = app.build_synthetic_app(Path(tmp) / "examples", steps=args.steps)
        launch(
            demo,
            argparse.Namespace(host="127.0.0.1", port=port, share=False),
            allowed_paths=[examples_dir],
            css=app.SYNTHETIC_CSS,
            block=False,
        )
        driver = headless_chromium("1280,860")
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(f"http://127.0.0.1:{port}/")
            pick_examples(driver, wait, args.identity, args.template)
            wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, f"#{ELEM_IDS['generate']}"))).click()
            output_src(driver, wait)
            driver.execute_script("window.scrollTo(0, 0)")  # clicking an example scrolled the page down
            out = Path(args.output)
            tmp_png = out.with_suffix(".tmp.png")
            driver.save_screenshot(str(tmp_png))
            tmp_png.replace(out)
        finally:
            driver.quit()
            demo.close()
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
