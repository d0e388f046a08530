"""The demo in a real browser: Debian's headless chromium driven by Selenium through chromedriver.

Presses Generate and waits for the gallery; picks a long example, sees its previews stream into the gallery
and stops it with the Stop button (the engine request is cancelled); draws on the sketchpad and turns it into a digit, checks that
the page fetched nothing from outside the server, and saves screenshots to ``test-artifacts/``. Skipped
only where chromium or chromedriver is not installed (CI installs both).

Served bundle: the shipped digits model when ``latent_ddpm/data/digits/bundle.json`` exists, otherwise the
tiny factory bundle from ``tests/bundle_factory.py`` (see ``tests/demo_server.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_server import LiveDemo, demo_bundle, first_request, live_demo, record_requests

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from latent_ddpm.demo.app import STOPPED  # noqa: E402
from latent_ddpm.demo.imaging import display_scale  # noqa: E402
from latent_ddpm.demo.screenshot import start_browser  # noqa: E402
from latent_ddpm.runtime.handles import Cancelled  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDemo]:
    with live_demo(demo_bundle(tmp_path_factory.mktemp("browser"))) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_browser(1400, 1100, {"goog:loggingPrefs": {"performance": "ALL"}})
    yield driver
    driver.quit()


def _requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _gallery_images(driver: webdriver.Chrome, css: str) -> list:
    return [img for img in driver.find_elements(By.CSS_SELECTOR, css) if img.get_attribute("src")]


def test_generate_in_the_browser(demo: LiveDemo, browser: webdriver.Chrome) -> None:
    browser.get(demo.url)
    wait = WebDriverWait(browser, 60)
    button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#generate-btn")))
    button.click()
    wait.until(lambda d: "8 images in" in d.find_element(By.CSS_SELECTOR, "#timing").text)  # the final answer
    _, h, w = demo.pipe.bundle.image_shape
    width = str(display_scale(h) * w)
    wait.until(
        lambda d: (
            len(found := _gallery_images(d, "#gallery img")) == 8
            and all(img.get_attribute("naturalWidth") == width for img in found)
        )
    )
    assert "class " in browser.find_element(By.CSS_SELECTOR, "#gallery").text  # not a preview's "step i/n"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo_generate.png"))

    outside = [
        u for u in _requested_urls(browser) if not u.startswith((demo.url, "data:", "blob:", "about:"))
    ]
    assert outside == [], f"the page fetched from outside the server: {outside}"


def test_stop_cancels_the_engine_request(
    demo: LiveDemo, browser: webdriver.Chrome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 'DDPM 1000' example takes a while; Stop (Gradio ``cancels=``) ends it and its engine request."""
    requests = record_requests(demo, monkeypatch)
    browser.get(demo.url)
    wait = WebDriverWait(browser, 60)
    example = wait.until(EC.element_to_be_clickable((By.XPATH, "//*[text()='DDPM 1000, as trained']")))
    example.click()
    browser.find_element(By.CSS_SELECTOR, "#generate-btn").click()
    request = first_request(requests, lambda: False)
    # The previews of the predicted clean images stream into the gallery while it samples.
    wait.until(lambda d: len(_gallery_images(d, "#gallery img")) >= 8)
    assert "step 1/1000" in browser.find_element(By.CSS_SELECTOR, "#gallery").text
    browser.find_element(By.CSS_SELECTOR, "#generate-stop").click()
    events = list(request.events(timeout=120))
    assert isinstance(events[-1], Cancelled), events[-1]
    wait.until(lambda d: STOPPED in d.find_element(By.CSS_SELECTOR, "#timing").text)
    assert "step 1/1000" in browser.find_element(By.CSS_SELECTOR, "#gallery").text  # the previews stay
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo_stopped.png"))


def test_sketch_to_digit_in_the_browser(demo: LiveDemo, browser: webdriver.Chrome) -> None:
    if not demo.pipe.bundle.has_encoder:
        pytest.skip("the served bundle has no vae_encoder.onnx")
    browser.get(demo.url)
    wait = WebDriverWait(browser, 60)
    tab = wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab'][contains(., 'sketch')]")))
    tab.click()
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#sketchpad button[aria-label='Brush']"))).click()
    canvas = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#sketchpad canvas")))
    # A "1": one vertical stroke through the middle of the canvas.
    ActionChains(browser).move_to_element_with_offset(canvas, 0, -80).click_and_hold().move_by_offset(
        0, 40
    ).move_by_offset(0, 40).move_by_offset(0, 40).move_by_offset(0, 40).release().perform()
    wait.until(lambda d: _gallery_images(d, "#model-input img"))
    browser.find_element(By.CSS_SELECTOR, "#img2img-btn").click()
    results = wait.until(lambda d: len(found := _gallery_images(d, "#img2img-gallery img")) >= 4 and found)
    assert len(results) == 4  # the Variations slider's default
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo_sketch.png"))
