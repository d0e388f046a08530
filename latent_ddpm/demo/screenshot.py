"""Make the README's picture of the demo: the page with a model picked and its Generate gallery filled.

    python -m latent_ddpm.demo.screenshot --model emoji --out docs/images/demo_emoji.png

Serves the demo as `latent-ddpm demo` does (the shipped models and any --bundle) on a free local port,
opens it in headless Debian chromium, picks ``--model`` in the model picker, presses Generate and, once the
gallery holds every image of that model, saves a PNG of the page. It checks what it shows (the header names
the model, the gallery is full) and fails with one line rather than save a picture of the wrong page.

Selenium and a browser are tools for making the picture, not dependencies of the demo: selenium is imported
here only (``pip install selenium``, in the dev extra), with chromium and chromedriver from Debian
(``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_ddpm.errors import CLIError, LatentDDPMError

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
WAIT_S = 600  # a real model's Generate on a busy CPU; the tiny test bundle takes a second


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latent_ddpm.demo.screenshot", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", default=None, help="the model to pick (default: the demo's default model)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write (its folder must exist)")
    p.add_argument(
        "--bundle",
        action="append",
        default=None,
        help="also serve this bundle directory or shipped model name, as `latent-ddpm demo --bundle`",
    )
    p.add_argument("--width", type=int, default=1250, help="page width in pixels (the README picture's)")
    p.add_argument("--height", type=int, default=770, help="page height in pixels (the README picture's)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of the runtime")
    return p


def start_browser(width: int, height: int, capabilities: dict[str, Any] | None = None) -> Any:
    """Headless Debian chromium through chromedriver (Selenium): the demo's browser test uses it too."""
    try:
        from selenium import webdriver
    except ImportError:
        raise CLIError("the screenshot needs Selenium: pip install selenium") from None
    chromium, driver = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    if chromium is None or driver is None:
        raise CLIError(
            "the screenshot needs chromium and chromedriver: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    for key, value in (capabilities or {}).items():
        options.set_capability(key, value)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    # The page's viewport exactly width x height (the window's own frame would take some).
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    browser.set_page_load_timeout(60)
    return browser


def pick_model(browser: Any, name: str) -> None:
    """Choose ``name`` in the demo's model picker (a Gradio dropdown) as a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#model-picker input"))).click()
    option = f"//*[@id='model-picker']//li[@role='option'][@aria-label={_xpath_literal(name)}]"
    wait.until(EC.element_to_be_clickable((By.XPATH, option))).click()
    wait.until(lambda d: f"Model {name}:" in d.find_element(By.CSS_SELECTOR, "#header").text)


def _xpath_literal(text: str) -> str:
    """``text`` as an XPath string literal (a model or class name may hold either quote)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in text.split("'")) + ")"


def take(args: argparse.Namespace) -> Path:
    """Serve the demo, drive the browser, write ``args.out``; CLIError for anything the user can fix."""
    out = args.out
    if out.suffix.lower() != ".png" or not out.parent.is_dir():
        raise CLIError(f"--out must be a .png file in an existing folder, got {out}")
    try:
        from latent_ddpm.demo.app import build_app, launch
    except ImportError as exc:
        raise CLIError(f"the demo needs Gradio ({exc}): pip install 'latent-ddpm[demo]'") from None
    from latent_ddpm.demo.cli import bundle_sources
    from latent_ddpm.files import atomic_write

    app = build_app(bundle_sources(args), threads=args.threads)
    models = app.handlers.models
    model = models[args.model] if args.model in models else None
    if args.model is not None and model is None:
        app.close()
        raise CLIError(f"--model {args.model!r} is not one of {', '.join(models)}")
    browser = None
    try:
        browser = start_browser(args.width, args.height)
        launch(app, port=None, prevent_thread_lock=True, quiet=True)
        browser.get(app.local_url)
        if args.model is not None and args.model != app.handlers.model.name:
            pick_model(browser, args.model)
        png = _generate(browser, (model or app.handlers.model).image_shape)
        return atomic_write(out, png)
    finally:
        if browser is not None:
            browser.quit()
        app.close()


def _generate(browser: Any, image_shape: tuple[int, ...]) -> bytes:
    """Press Generate with the page's settings (seed 0: the picture repeats), wait until the run has answered
    and every image of it is in the gallery at display size; the page as PNG."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from latent_ddpm.demo.imaging import display_scale

    # the page is drawn by script after it loads: wait for the button, not only for the page
    button = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate-btn"))
    button[0].click()
    width = str(display_scale(image_shape[1]) * image_shape[2])

    def full(d: Any) -> bool:
        answered = re.search(r"(\d+) images? in", d.find_element(By.CSS_SELECTOR, "#timing").text)
        found = [i for i in d.find_elements(By.CSS_SELECTOR, "#gallery img") if i.get_attribute("src")]
        return (
            bool(answered)
            and len(found) == int(answered[1])
            and all(i.get_attribute("naturalWidth") == width for i in found)
        )

    try:
        WebDriverWait(browser, WAIT_S).until(full)
    except TimeoutException:
        timing = browser.find_element(By.CSS_SELECTOR, "#timing").text
        raise CLIError(
            f"Generate did not fill the gallery within {WAIT_S} s (the page says: {timing!r})"
        ) from None
    browser.execute_script("window.scrollTo(0, 0)")  # pressing Generate scrolled to the button
    return browser.get_screenshot_as_png()


def main(argv: Sequence[str] | None = None) -> int:
    """One line on stdout naming the picture, or one line on stderr and exit status 2."""
    try:
        print(f"wrote {take(build_parser().parse_args(argv))}")
        return 0
    except LatentDDPMError as exc:
        print(f"screenshot: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
