"""The dashboard in a real browser: `streamlit run` on a free loopback port, driven by headless
Chromium (Debian's package, through Playwright; never a downloaded browser). It launches a short
training run from the Train page, waits for the live curve, finds the run in Compare, uploads a
photo on Predict and reads its probability, and saves a screenshot of each page
($FVR_SCREENSHOT_DIR, else tests/artifacts/screenshots)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("FVR_SCREENSHOT_DIR") or REPO / "tests" / "artifacts" / "screenshots")
VIEWPORT = {"width": 1400, "height": 2400}  # Streamlit scrolls inside its own container: a tall page shows it all

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, demo_data):
    port = free_port()
    # the Train page prewarms a worker as it would for a user (it exits 20 s after its last run)
    env = {**os.environ, "FVR_DATA": str(demo_data), "PYTHONPATH": str(REPO), "FVR_PREWARM_SECONDS": "20"}
    log = open(tmp_path / "streamlit.log", "w")
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        yield url, started
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=30_000)
    # a page has rendered when Streamlit's "running" indicator is gone and a title is there
    page.wait_for_selector("h1", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def shot(page, name: str) -> None:
    """Save the page, cut below its last drawn row (the tall viewport leaves blank space)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    blank = image.crop((0, image.height - 1, image.width, image.height)).tobytes()  # the sidebar and background
    drawn = next((y for y in range(image.height - 1, -1, -4)
                  if image.crop((0, y, image.width, y + 1)).tobytes() != blank), image.height)
    image.crop((0, 0, image.width, min(image.height, drawn + 40))).save(SCREENSHOTS / f"{name}.png", optimize=True)


def test_dashboard_in_a_real_browser(server, browser, tmp_path, demo_data):
    url, started = server
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)

    open_page(page, url)
    print(f"first page rendered {time.time() - started:.1f} s after the server process started")
    assert "fake vs real" in page.locator("h1").first.inner_text()
    shot(page, "home")

    open_page(page, f"{url}/data")
    page.get_by_text("nothing was skipped").wait_for()
    page.locator(".js-plotly-plot").nth(1).wait_for()  # class counts and split sizes
    page.locator("[data-testid='stImage'] img").nth(15).wait_for()  # 8 samples of each class
    shot(page, "data")

    open_page(page, f"{url}/train")
    page.get_by_text("Estimated time").wait_for()
    clicked = time.time()
    page.get_by_role("button", name="Train", exact=True).click()
    # the live fragment draws the curves once the first step rows are written
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=120_000)
    print(f"first live point {time.time() - clicked:.1f} s after clicking Train")
    page.get_by_text("completed in").wait_for(timeout=180_000)
    # the finished run's view is redrawn without its Stop button (the header's Stop is Streamlit's own)
    expect(page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")).to_have_count(0, timeout=30_000)
    shot(page, "train")

    open_page(page, f"{url}/compare")
    page.get_by_text("Runs to compare").wait_for()
    page.locator(".js-plotly-plot").nth(3).wait_for()  # curves, test bars, confusion matrix, ROC
    assert page.get_by_text("cnn ·").count() >= 1
    shot(page, "compare")

    open_page(page, f"{url}/predict")
    photo = tmp_path / "synthetic face.jpg"  # a demo-set fake, enlarged: any size is accepted
    Image.open(sorted((demo_data / "fake").iterdir())[0]).resize((400, 400)).save(photo)
    page.locator("input[type=file]").first.set_input_files(str(photo))
    probability = verdict_probability(page)
    assert 0 <= probability <= 100
    page.get_by_text('evidence for "').first.wait_for()  # the saliency map comes last
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    shot(page, "predict")


def verdict_probability(page) -> float:
    """The percentage in the first verdict line ("**cnn ...**: fake (63% fake)") once it shows."""
    verdict = page.locator("[data-testid='stMarkdownContainer']", has_text="% fake)").first
    verdict.wait_for(timeout=60_000)
    return float(verdict.inner_text().split("(")[-1].split("%")[0])


def test_predict_shows_the_face_crop_heatmap_and_probability(server, browser, tmp_path, demo_data, shared_faces):
    """A real face in a wide photo: the page shows the crop beside the photo, a saliency map and
    the calibrated probability (nothing of it is saved: the shared faces stay out of the repo)."""
    from fvr_core.config import TrainConfig
    from fvr_core.training import train

    train(TrainConfig(data=str(demo_data), model="cnn", epochs=1, image_size=48, batch_size=16))
    url, _ = server
    canvas = Image.new("RGB", (1000, 560), (120, 130, 140))
    canvas.paste(Image.open(shared_faces / "real" / "3.jpg"), (600, 150))
    photo = tmp_path / "wide photo.jpg"
    canvas.save(photo)

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(60_000)
    open_page(page, f"{url}/predict")
    page.locator("input[type=file]").first.set_input_files(str(photo))
    assert 0 <= verdict_probability(page) <= 100
    expect(page.get_by_text("face", exact=True)).to_be_visible()  # the crop's caption
    expect(page.get_by_text('evidence for "').first).to_be_visible()  # the saliency map's caption
    images = page.locator("[data-testid='stImage'] img")
    assert images.count() >= 3  # the photo with its face box, the crop, the heatmap
