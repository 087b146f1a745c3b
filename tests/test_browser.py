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

from conftest import REPO, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("FVR_SCREENSHOT_DIR") or REPO / "tests" / "artifacts" / "screenshots")
VIEWPORT = {"width": 1400, "height": 2400}  # Streamlit scrolls inside its own container: a tall page shows it all
# every wait names its timeout (Playwright's expect() defaults to 5 s, whatever the page's default):
# CI runs beside other work, and a page that answers in 2 s alone can take 30 s on a busy machine
WAIT = 120_000  # ms: a page's state (an element, a caption, the running indicator gone)
TRAINING = 300_000  # ms: a training run's first curve point, and its end

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)",
)]


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
        deadline = time.time() + WAIT / 1000
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        yield url, started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)  # a loaded machine can take a while
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
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
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=WAIT)
    # a page has rendered when Streamlit's "running" indicator is gone and a title is there
    page.wait_for_selector("h1", timeout=WAIT)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT)


def shot(page, name: str) -> None:
    """Save the page, cut below its last drawn row (the tall viewport leaves blank space)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    blank = image.crop((0, image.height - 1, image.width, image.height)).tobytes()  # the sidebar and background
    drawn = next((y for y in range(image.height - 1, -1, -4)
                  if image.crop((0, y, image.width, y + 1)).tobytes() != blank), image.height)
    cropped = image.crop((0, 0, image.width, min(image.height, drawn + 40)))
    # 256 colours: a page of text and flat charts looks the same at a fraction of the size
    cropped.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(SCREENSHOTS / f"{name}.png", optimize=True)


def test_dashboard_in_a_real_browser(server, browser, tmp_path, demo_data):
    url, started = server
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(WAIT)

    open_page(page, url)
    print(f"first page rendered {time.time() - started:.1f} s after the server process started")
    assert "fake vs real" in page.locator("h1").first.inner_text()
    shot(page, "home")

    open_page(page, f"{url}/data")
    page.get_by_text("nothing was skipped").wait_for(timeout=WAIT)
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=WAIT)  # class counts and split sizes
    page.locator("[data-testid='stImage'] img").nth(15).wait_for(timeout=WAIT)  # 8 samples of each class
    shot(page, "data")

    open_page(page, f"{url}/train")
    page.get_by_text("Estimated time").wait_for(timeout=WAIT)
    clicked = time.time()
    page.get_by_role("button", name="Train", exact=True).click()
    # the live fragment draws the curves once the first step rows are written
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=TRAINING)
    print(f"first live point {time.time() - clicked:.1f} s after clicking Train")
    # the finished run's view is redrawn without its Stop button (the header's Stop is Streamlit's own);
    # "completed in" alone could be a reference run's label in the list of runs
    # (a widget's help icon whose text says "early stopping" would match a role-and-name lookup)
    main = page.get_by_test_id("stMainBlockContainer")
    expect(main.locator("[data-testid^='stBaseButton']").filter(has_text="Stop")).to_have_count(0, timeout=TRAINING)
    expect(main.get_by_text("completed in").first).to_be_visible(timeout=WAIT)
    shot(page, "train")

    open_page(page, f"{url}/compare")
    page.get_by_text("Runs to compare").wait_for(timeout=WAIT)
    page.locator(".js-plotly-plot").nth(3).wait_for(timeout=WAIT)  # curves, test bars, confusion matrix, ROC
    expect(page.get_by_text("cnn ·").first).to_be_visible(timeout=WAIT)
    shot(page, "compare")

    open_page(page, f"{url}/predict")
    photo = tmp_path / "synthetic face.jpg"  # a demo-set fake, enlarged: any size is accepted
    Image.open(sorted((demo_data / "fake").iterdir())[0]).resize((400, 400)).save(photo)
    # the synthetic pictures hold no face a detector finds: judge the whole photo (off by default)
    page.get_by_text("Judge photos without a face").click()
    page.locator("input[type=file]").first.set_input_files(str(photo))
    probability = verdict_probability(page)
    assert 0 <= probability <= 100
    page.get_by_text('evidence for "').first.wait_for(timeout=WAIT)  # the saliency map comes last
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT)
    shot(page, "predict")


def verdict_probability(page) -> float:
    """The percentage in the first verdict line ("**cnn ...**: fake (63% fake)") once it shows."""
    verdict = page.locator("[data-testid='stMarkdownContainer']", has_text="% fake)").first
    verdict.wait_for(timeout=WAIT)
    return float(verdict.inner_text().split("(")[-1].split("%")[0])


def test_predict_shows_the_face_crop_heatmap_and_probability(server, browser, tmp_path, demo_data, shared_faces):
    """A real face in a wide photo: the page shows the crop beside the photo, a saliency map and
    the calibrated probability (nothing of it is saved: the shared faces stay out of the repo)."""
    from fvr_core.config import TrainConfig
    from fvr_core.training.trainer import train

    train(TrainConfig(data=str(demo_data), model="tiny_cnn", epochs=1, image_size=48, batch_size=16))
    url, _ = server
    canvas = Image.new("RGB", (1000, 560), (120, 130, 140))
    canvas.paste(Image.open(shared_faces / "real" / "3.jpg"), (600, 150))
    photo = tmp_path / "wide photo.jpg"
    canvas.save(photo)

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(WAIT)
    open_page(page, f"{url}/predict")
    page.locator("input[type=file]").first.set_input_files(str(photo))
    assert 0 <= verdict_probability(page) <= 100
    expect(page.get_by_text("face", exact=True)).to_be_visible(timeout=WAIT)  # the crop's caption
    expect(page.get_by_text('evidence for "').first).to_be_visible(timeout=WAIT)  # the saliency map's caption
    images = page.locator("[data-testid='stImage'] img")
    images.nth(2).wait_for(timeout=WAIT)  # at least 3: the photo with its face box, the crop, the heatmap


# ---------------------------------------------------------------- journeys of issue 14

PAGES = {"Home", "Data", "Train", "Search", "Compare", "Predict"}
# records every entry the sidebar's page navigation ever shows, from the first paint on
RECORD_NAV = r"""
window.__navSeen = new Set();
const record = () => document.querySelectorAll("[data-testid='stSidebarNav'] a, [data-testid='stSidebarNavLink']")
    .forEach(a => {  // the label is the link's last line (the icon's ligature name comes first)
        const t = (a.innerText || "").split("\n").map(x => x.trim()).filter(Boolean).pop();
        if (t) window.__navSeen.add(t);
    });
new MutationObserver(record).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_the_sidebar_never_lists_an_entry_that_is_not_a_page(server, browser):
    """The first page a fresh server draws: Streamlit's old pages/ discovery must not flash the
    files of pages/ ("streamlit app", "common", ...) before st.navigation's five pages."""
    url, _ = server
    page = browser.new_page(viewport=VIEWPORT)
    page.add_init_script(RECORD_NAV)
    open_page(page, url)
    page.wait_for_function(f"() => window.__navSeen.size >= {len(PAGES)}", timeout=60_000)
    page.locator("h1").first.wait_for(timeout=60_000)  # the page itself is drawn after its sidebar
    seen = set(page.evaluate("() => [...window.__navSeen]"))
    assert seen == PAGES, f"the sidebar listed {sorted(seen - PAGES)} besides the pages"


def _slider(page, label: str):
    return page.locator(f"input[type=range][aria-label='{label}']")


def test_data_set_and_settings_survive_a_reload_and_a_new_tab(server, browser, tmp_path):
    """A data set chosen on the Data page and settings chosen on Train come back after a reload,
    in a second tab opened on the same link, and (the data set) in a new tab opened bare."""
    from fvr_core.data.demo import make_demo_dataset
    from fvr_core.settings import data_root

    url, _ = server
    make_demo_dataset(data_root() / "second-set", per_class=12, size=48)  # listed beside $FVR_DATA (the default)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    open_page(page, f"{url}/data")
    page.get_by_test_id("stSelectbox").filter(has_text="Data sets found").click()
    page.get_by_role("option", name="second-set", exact=False).click()
    expect(page.get_by_role("heading", name="second-set")).to_be_visible(timeout=60_000)

    page.get_by_test_id("stSidebarNavLink").filter(has_text="Train").click()
    page.get_by_text("Estimated time").wait_for(timeout=60_000)
    page.get_by_role("button", name="Preset: Original recipe").click()
    expect(_slider(page, "Epochs")).to_have_value("30", timeout=60_000)
    page.wait_for_function("() => location.search.includes('image_size=300')", timeout=60_000)
    main = page.get_by_test_id("stMainBlockContainer")
    expect(main.get_by_text("second-set").first).to_be_visible(timeout=60_000)

    for view in ("reload", "tab with the link"):
        if view == "reload":
            page.reload()
        else:
            link = page.url
            page = context.new_page()
            page.goto(link)
        page.get_by_text("Estimated time").wait_for(timeout=60_000)
        expect(_slider(page, "Epochs"), f"after a {view} the settings fell back to the preset").to_have_value("30", timeout=60_000)
        expect(page.get_by_test_id("stMainBlockContainer").get_by_text("second-set").first).to_be_visible(timeout=60_000)

    bare = context.new_page()
    open_page(bare, f"{url}/train")
    bare.get_by_text("Estimated time").wait_for(timeout=60_000)
    expect(bare.get_by_test_id("stMainBlockContainer").get_by_text("second-set").first).to_be_visible(timeout=60_000)


def test_resume_is_followed_live_to_completion(server, browser, demo_data):
    """A stopped run, resumed from the page: the progress and the curves move on their own until
    the run completes, with no navigation and no reload (the page opened while nothing trained)."""
    from fvr_core.config import TrainConfig
    from fvr_core.training.launcher import launch, stop, wait

    url, _ = server
    run = launch(TrainConfig(data=str(demo_data), model="cnn", epochs=4, image_size=48, batch_size=8))
    try:
        wait_until(run.epoch_rows, 180, "a first epoch: a checkpoint to resume from")
        stop(run)
        assert wait(run, timeout=180) == "stopped", "the run ended before the test could stop it"
        steps_at_stop = len(run.step_rows())

        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(60_000)
        open_page(page, f"{url}/train")
        main = page.get_by_test_id("stMainBlockContainer")
        main.get_by_text(f"{run.id} is stopped").wait_for(timeout=60_000)
        main.get_by_role("button", name="Resume").click()
        page.locator("[data-testid='stProgress']").wait_for(timeout=120_000)  # followed live again
        expect(main.get_by_text(f"{run.id} is stopped")).to_have_count(0, timeout=60_000)
        main.get_by_text(f"{run.id} completed in").wait_for(timeout=300_000)
        assert run.state == "completed" and len(run.step_rows()) > steps_at_stop
    finally:
        if run.state in ("queued", "running"):  # no worker outlives the test
            stop(run)
            wait(run, timeout=120)
