"""`emojidiff-synthetic app` (what `make app` runs): rendered examples, the generate function, and the page driven in
headless Chromium (skipped, with the reason, where no browser or driver is installed; `.ci/run` installs them)."""

from __future__ import annotations

import argparse
import io
import socket
import time
import urllib.request

import numpy as np
import PIL.Image
import pytest

from emojidiff_synthetic.app import EXAMPLE_EXPRESSIONS, render_examples
from emojidiff_synthetic.demo import main as synthetic_main
from emojidiff_synthetic.load import EMOJIDIFF_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_embedded = pytest.mark.skipif(
    not (EMOJIDIFF_DIR / "emoji_adapter" / "config.json").is_file(),
    reason=f"the embedded default is not built in this checkout ({EMOJIDIFF_DIR})",
)


def test_render_examples_are_deterministic(tmp_path):
    identities, templates = render_examples(tmp_path / "a", num_identities=2, photos_per_identity=3)
    again, _ = render_examples(tmp_path / "b", num_identities=2, photos_per_identity=3)
    assert len(identities) == 2 and all(len(photos) == 3 and prompt for photos, prompt in identities)
    assert len(templates) == len(EXAMPLE_EXPRESSIONS)
    for (photos, prompt), (photos2, prompt2) in zip(identities, again):
        assert prompt == prompt2 and [p.read_bytes() for p in photos] == [p.read_bytes() for p in photos2]
    people = {p.name.split("_")[1] for p in identities[0][0]} | {t.name.split("_")[2][:-4] for t in templates}
    assert len(people) == 1 + len(templates)  # one person per identity, another per template
    with pytest.raises(ValueError, match="`num_identities` and `photos_per_identity` must be >= 1"):
        render_examples(tmp_path / "c", num_identities=0)


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--port", "70000"], r"--port must be in \[0, 65535\]"),
        (["--device", "bogus"], "--device 'bogus' is not a torch device"),
    ],
    ids=["steps 0", "port", "device"],
)
def test_app_checks_arguments_before_loading(monkeypatch, argv, pattern):
    import emojidiff_synthetic.app as app

    monkeypatch.setattr(app, "build_synthetic_app", lambda *a, **k: pytest.fail("loaded before checking arguments"))
    with pytest.raises(SystemExit, match=pattern) as info:
        synthetic_main(["app", *argv])
    assert str(info.value.code).startswith("emojidiff-synthetic app: --")


@pytest.fixture(scope="module")
def world_pipe():
    import torch

    from emojidiff_synthetic.load import load_world

    world = load_world()
    pipe = world.pipeline(torch_dtype=torch.float32)
    pipe.set_face_analyzer(world.train_face)
    return pipe


@needs_embedded
def test_generate_takes_several_photos_of_one_person(world_pipe, tmp_path):
    import torch

    from emojidiff_pipeline.app import make_generate

    identities, templates = render_examples(tmp_path, num_identities=1, photos_per_identity=3)
    photos = [PIL.Image.open(p) for p in identities[0][0]]
    template = PIL.Image.open(templates[0])
    generate = make_generate(world_pipe)
    args = ("a portrait", 1.0, 1.0, 2, 5.0, 3)  # prompt, identity / expression scale, steps, guidance, seed
    # gallery values arrive as (image, caption) tuples
    out = np.asarray(generate([(p, None) for p in photos], template, *args))
    embeds = torch.as_tensor(np.stack([world_pipe.face_analyzer.identity_embedding(p) for p in photos]))[None]
    direct = world_pipe(
        "a portrait",
        identity_embeds=embeds,
        expression_image=template,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    np.testing.assert_array_equal(out, np.asarray(direct))  # all photos reach the pipeline as one person
    one = np.asarray(generate(photos[:1], template, *args))
    assert np.abs(out.astype(float) - one).mean() > 0.5  # the other photos count
    with pytest.raises(ValueError, match="Add one or more identity photos"):
        generate([], template, *args)
    with pytest.raises(ValueError, match="Add an expression template"):
        generate(photos, None, *args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    from emojidiff_synthetic.browser import headless_chromium, missing_browser

    if missing_browser():
        pytest.skip(missing_browser())
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [test] extra has it)")
    driver = headless_chromium()
    yield driver
    driver.quit()


@needs_embedded
def test_app_page_in_headless_chromium(browser, world_pipe, tmp_path, monkeypatch):
    """Load the page, click an example identity and template, generate; another template gives another image."""
    pytest.importorskip("gradio", reason="gradio is not installed (the [app] and [test] extras have it)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    import emojidiff_synthetic.app as app
    from emojidiff_pipeline.app import ELEM_IDS, launch
    from emojidiff_synthetic.browser import output_src as browser_output_src
    from emojidiff_synthetic.browser import pick_examples

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # the served files stay in this test's folder
    monkeypatch.setattr("emojidiff_synthetic.load.World.pipeline", lambda self, **kwargs: world_pipe)
    demo, examples_dir = app.build_synthetic_app(tmp_path / "examples", steps=2)
    port = _free_port()
    server = argparse.Namespace(host="127.0.0.1", port=port, share=False)
    launch(demo, server, allowed_paths=[examples_dir], css=app.SYNTHETIC_CSS, block=False)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")

        def css(selector):
            return wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, selector)))

        def output_src(previous=None):
            return browser_output_src(browser, wait, previous)  # an error toast raises

        def fetch(src):
            with urllib.request.urlopen(src, timeout=30) as response:
                return np.asarray(PIL.Image.open(io.BytesIO(response.read())).convert("RGB"))

        def template_src():
            imgs = browser.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['template']} img")
            return imgs[0].get_attribute("src") if imgs else None

        css(f"#{ELEM_IDS['generate']}").click()  # nothing given yet: the page says what is missing
        toast = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".toast-body.error")))
        assert "Add one or more identity photos" in toast.text
        toast.find_element(By.CSS_SELECTOR, ".toast-close").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".toast-body.error"))
        pick_examples(browser, wait, identity=0, template=0)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['identity']} img")) >= 3)
        wait.until(lambda d: template_src())
        prompt = browser.find_element(By.CSS_SELECTOR, f"#{ELEM_IDS['prompt']} textarea").get_attribute("value")
        assert "emoji" in prompt  # the example identity's caption came with it
        started = time.perf_counter()
        css(f"#{ELEM_IDS['generate']}").click()
        first_src = output_src()
        first = fetch(first_src)
        assert first.shape == (64, 64, 3) and first.std() > 5, "the output is not a portrait"
        first_template = template_src()
        browser.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['template_examples']} button.gallery-item")[3].click()
        wait.until(lambda d: template_src() not in (None, first_template))
        css(f"#{ELEM_IDS['generate']}").click()
        second = fetch(output_src(previous=first_src))
        assert second.shape == first.shape
        assert np.abs(second.astype(float) - first).mean() > 1.0, "another template gave the same image"
        assert time.perf_counter() - started < 60
    finally:
        demo.close()
