"""The Search page in a real browser (Debian's Chromium through Playwright, as tests/test_browser.py):
set a small search with the page's own widgets, press Start, watch the live table of trials fill
and Optuna's plots appear, then reload and open a second tab: both find the search, nothing
restarts. Saves search.png ($FVR_SCREENSHOT_DIR, else tests/artifacts/screenshots)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from fvr_core.training.searches import SearchStore
from test_browser import CHROMIUM, VIEWPORT, browser, open_page, server, shot  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(
    not __import__("pathlib").Path(CHROMIUM).is_file(),
    reason="Debian's chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)",
)
WAIT_MS = 300_000  # a search of 3 small trials on a busy 2-core machine: generous, explicit


def choose(page, label: str, option: str) -> None:
    box = page.get_by_role("combobox", name=label)
    box.click()
    page.locator("[role='option']").filter(has_text=option).first.click()
    expect(box).to_have_value(option, timeout=60_000)


def slide_to_start(page, label: str) -> None:
    slider = page.locator("[data-testid='stSlider']").filter(has_text=label).locator("input[type='range']").first
    slider.focus()
    slider.press("Home")


def settle(page) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def test_search_page_start_live_table_plots_reload_and_second_tab(server, browser):
    url, _ = server
    page = browser.new_page(viewport=VIEWPORT)
    open_page(page, url)  # the home page first, as a visitor arrives (and Streamlit learns the app's pages)
    open_page(page, f"{url}/search")
    expect(page.get_by_text("Estimated time")).to_be_visible(timeout=120_000)
    choose(page, "Model (every trial)", "mobilenet_v3_small")
    settle(page)
    slide_to_start(page, "Epochs per trial")  # 1 epoch
    settle(page)
    slide_to_start(page, "Image size")  # 48 px
    settle(page)
    trials = page.locator("[data-testid='stNumberInput']").filter(has_text="Trials").locator("input")
    trials.fill("3")
    trials.press("Enter")
    settle(page)
    choose(page, "Pruner", "none")
    settle(page)
    expect(page.get_by_text("3 trials of about")).to_be_visible(timeout=120_000)

    page.get_by_role("button", name="Start the search").click()
    # the live table shows the first trial while it trains, then all three with their objective
    table = page.locator("[data-testid='stDataFrame']")
    expect(table).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("completed: 3 trials")).to_be_visible(timeout=WAIT_MS)
    (search,) = SearchStore().list()
    assert [r["state"] for r in search.trials_table()] == ["completed"] * 3
    expect(page.get_by_role("tab", name="Optimisation history")).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    page.get_by_role("tab", name="Parallel coordinates").click()
    settle(page)
    shot(page, "search")

    # a reload and a second tab find the same search; nothing was started again
    page.reload()
    settle(page)
    expect(page.get_by_text("completed: 3 trials")).to_be_visible(timeout=120_000)
    other = browser.new_page(viewport=VIEWPORT)
    open_page(other, f"{url}/search")
    expect(other.get_by_text("completed: 3 trials")).to_be_visible(timeout=120_000)
    expect(other.get_by_role("button", name="Train the best settings")).to_be_visible(timeout=60_000)
    assert len(SearchStore().list()) == 1 and len(search.runs()) == 3
