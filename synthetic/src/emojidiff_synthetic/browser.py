"""Headless Chromium for the app: the driver (system chromium + chromedriver, nothing downloaded) and the clicks
that fill the page from its examples and generate. Used by the browser test and by the README's screenshot."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = os.environ.get("EMOJIDIFF_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EMOJIDIFF_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSER_PACKAGES = ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))  # (path, Debian package)


def missing_browser() -> str | None:
    """Why no headless browser can start here (None when one can)."""
    for path, package in BROWSER_PACKAGES:
        if not Path(path).is_file():
            return f"no headless browser: {path} is missing (`apt-get install -y {package}`; .ci/run installs it)"
    return None


def headless_chromium(window_size: str = "1400,1800"):
    """A selenium Chrome driver on the system's chromium and chromedriver (an explicit driver: nothing downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={window_size}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def output_src(driver, wait, previous: str | None = None) -> str:
    """The `src` of the page's output image once there is one (other than `previous`); an error toast fails."""
    from selenium.webdriver.common.by import By

    from emojidiff_pipeline.app import ELEM_IDS

    def ready(d):
        errors = d.find_elements(By.CSS_SELECTOR, ".toast-body.error")
        if errors:
            raise RuntimeError(f"the page shows an error: {errors[0].text!r}")
        imgs = d.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['output']} img")
        src = imgs[0].get_attribute("src") if imgs else None
        return src if src and src != previous else False

    return wait.until(ready)


def pick_examples(driver, wait, identity: int = 0, template: int = 0) -> None:
    """Click the `identity`-th example identity and the `template`-th example template, and wait until both fill."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from emojidiff_pipeline.app import ELEM_IDS

    cell = f"#{ELEM_IDS['identity_examples']} [data-testid='dataset-cell-{identity}-0']"
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, cell))).click()
    items = f"#{ELEM_IDS['template_examples']} button.gallery-item"
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, items)))
    driver.find_elements(By.CSS_SELECTOR, items)[template].click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['identity']} img")) >= 1)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{ELEM_IDS['template']} img"))
