"""`/dashboard`: the page, its JSON feed `/dashboard/state`, the API key and the off switch.

The plain tests run a server on a small random checkpoint: the feed shows every block free, then
the blocks of a running request owned by its id, then free again; it wants the API key when one
is set; `--disable-dashboard` removes both routes; neither is in the OpenAPI document.

The browser test (marker `browser`, as test_docs_site.py: Debian's chromium and chromedriver,
selenium) serves the bundled model, opens `/dashboard#key=KEY` in headless Chromium, sends a
load, and watches the block map: owned blocks appear while the requests run, and none are owned
or shared once they are over. Screenshots go to a temporary folder (printed), or to
`$MINILLM_SCREENSHOTS`.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from minillm.assets import DEFAULT_MODEL
from minillm.entrypoints.openai.dashboard import expand
from server_process import API_KEY, ServerProcess
from test_docs_site import CHROMIUM_FLAGS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
NUM_BLOCKS = 64


@pytest.fixture(scope="module")
def server(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--api-key", API_KEY, "--num-gpu-blocks-override",
                            str(NUM_BLOCKS), "--max-model-len", "256")
    yield process
    process.stop()


def state(server, headers=AUTH) -> dict:
    response = httpx.get(f"{server.url}/dashboard/state", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition, server, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        current = state(server)
        if condition(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.05)


def test_state_follows_a_request(server):
    idle = state(server)
    assert idle["blocks"] == "f" * NUM_BLOCKS, idle["blocks"]
    assert idle["figures"]["num_running"] == 0 and idle["owners"] == {}
    # A long streamed request: its blocks are owned by its id while it runs.
    body = {"prompt": list(range(5, 65)), "max_tokens": 150, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={
            **AUTH, "X-Request-Id": "watched"}, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)  # the first chunk: the prompt is in the cache
        busy = state(server)
        owned = [int(b) for b, who in busy["owners"].items() if who == ["cmpl-watched"]]
        assert owned and all(busy["blocks"][b] == "o" for b in owned), busy
        assert [q["request_id"] for q in busy["queues"]["running"]] == ["cmpl-watched"]
        assert busy["figures"]["owned"] == len(owned) >= 4  # 60 prompt tokens, 16 per block
        again = expand(busy)  # the feed back as an EngineSnapshot, as the notebooks use it
        assert again.figures() == busy["figures"] and again.running[0].num_prompt_tokens == 60
        for _ in lines:
            pass
    after = wait_for(lambda s: s["figures"]["num_running"] == 0, server)
    assert set(after["blocks"]) <= {"f", "c"} and after["owners"] == {}, after
    assert after["blocks"].count("c") == after["figures"]["cached"] >= 3  # its full blocks
    assert after["counters"]["generation_tokens"] >= 150
    assert after["counters"]["ttft_count"] >= 1


def test_page_and_state_want_the_key_when_one_is_set(server):
    page = httpx.get(f"{server.url}/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/dashboard/state" in page.text  # the page holds no data, only where to fetch it
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(f"{server.url}/dashboard/state", headers=headers)
        assert response.status_code == 401, (headers, response.text)
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")], paths.keys()


def test_disable_dashboard(llama_checkpoint):
    process = ServerProcess(llama_checkpoint, "--disable-dashboard", "--num-gpu-blocks-override",
                            str(NUM_BLOCKS))
    try:
        for path in ("/dashboard", "/dashboard/state"):
            assert httpx.get(f"{process.url}{path}").status_code == 404, path
        assert httpx.get(f"{process.url}/health").status_code == 200
    finally:
        process.stop()


# -- in headless Chromium -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def block_counts(browser) -> dict:
    """What the page drew: the block map's counts per state (data attributes of its canvas)."""
    counts = browser.execute_script("return {...document.getElementById('blocks').dataset}")
    return {state: int(n) for state, n in counts.items()}


def wait_page(browser, condition, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        counts = block_counts(browser)
        if (counts and condition(counts)) or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


@pytest.mark.browser
def test_dashboard_in_chromium(browser, tmp_path_factory):
    folder = os.environ.get("MINILLM_SCREENSHOTS")
    shots = Path(folder) if folder else tmp_path_factory.mktemp("dashboard-screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(DEFAULT_MODEL, "--api-key", API_KEY, "--num-gpu-blocks-override",
                           "512")
    try:
        browser.get(f"{server.url}/dashboard#key={API_KEY}")
        idle = wait_page(browser, lambda c: c["free"] == 512)
        assert idle == {"free": 512, "cached": 0, "owned": 0, "shared": 0}, idle
        assert browser.current_url.endswith("/dashboard"), "the key stayed in the address"
        browser.save_screenshot(str(shots / "dashboard-idle.png"))

        def request(i: int) -> None:
            httpx.post(f"{server.url}/v1/completions", headers=AUTH, timeout=300, json={
                "prompt": f"Chapter {i}. It was a truth universally acknowledged",
                "max_tokens": 150, "ignore_eos": True, "n": 1 + i % 2, "temperature": 1.0})

        load = [threading.Thread(target=request, args=(i,)) for i in range(8)]
        for thread in load:
            thread.start()
        busy = wait_page(browser, lambda c: c["owned"] >= 8)
        browser.save_screenshot(str(shots / "dashboard-load.png"))
        assert busy["owned"] >= 8, f"the page never showed the load's blocks: {busy}"
        queues = browser.find_element("id", "n-running").text
        assert int(queues) >= 1, queues
        for thread in load:
            thread.join()
        after = wait_page(browser, lambda c: c["owned"] + c["shared"] == 0)
        time.sleep(1.5)  # a few more polls, so the charts hold the whole run
        browser.save_screenshot(str(shots / "dashboard-after.png"))
        assert after["owned"] + after["shared"] == 0 and after["cached"] > 0, after
        assert after["free"] + after["cached"] == 512, after
        charts = browser.execute_script(
            "return [...document.querySelectorAll('.chart polyline')]"
            ".map(p => p.getAttribute('points').split(' ').length)")
        assert len(charts) == 5 and min(charts) >= 2, charts
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        print(f"screenshots: {shots}")
    finally:
        server.stop()
