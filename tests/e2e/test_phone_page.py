"""The simulator's phone page in a real headless Chromium: a login waits, a click decides it.

Drives Debian's `chromium` through Debian's `chromedriver` (the same build, so they always
match) with selenium. Selenium Manager, which would download a driver or a browser, never
runs: the driver path is given explicitly, SE_OFFLINE is set, and a call to it fails the
test. With CI=true a missing chromium or chromedriver fails the test (tests.support).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager

from radius_proxy.simulator import BackgroundSimulator, parse_rules
from tests.conftest import PROXY_SECRET, RunningProxy, session_starts
from tests.support import ManagedProcess, free_port, python_module_cmd, require_binary, wait_for

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=480,900",
)
STATION = "203.0.113.9"
DEMO_SECRET = "radius-proxy-demo-secret"
APPROVED, DENIED = 3, 4  # AuthSessionState

# Every visible pending card, read in one script so a re-render cannot split the reading.
_CARDS_JS = """
return Array.from(document.querySelectorAll("#sessions article.session")).map(a => ({
  id: a.dataset.session, secsignid: a.dataset.secsignid,
  title: a.querySelector("h2").innerText,
  lines: Array.from(a.querySelectorAll("p")).map(p => p.innerText),
  buttons: Array.from(a.querySelectorAll("button")).map(b => b.id + ":" + b.innerText),
  visible: a.offsetParent !== null,
}));
"""


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    monkeypatch.setenv("SE_OFFLINE", "true")

    def no_selenium_manager(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("selenium-manager must not run (it would download things)")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=chromedriver,
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def radtest() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `radius-proxy radtest alice` in the background; killed at teardown if still up."""
    started: list[subprocess.Popen[str]] = []

    def start(server: str, secret: str, *extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            python_module_cmd("radtest", "alice", "--password", "alicepass", "--server", server,
                              "--secret", secret, *extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def pending_card(driver: webdriver.Chrome, secsignid: str, timeout: float = 15.0,
                 ) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def appeared() -> bool:
        found[:] = [c for c in driver.execute_script(_CARDS_JS) if c["secsignid"] == secsignid]
        return bool(found)

    wait_for(appeared, timeout, f"a pending push for {secsignid} on the phone page", 0.1)
    assert len(found) == 1, found
    return found[0]


def click(driver: webdriver.Chrome, element_id: str) -> None:
    """A real (WebDriver) click; the page re-renders its cards when a session changes state."""
    for _ in range(20):
        try:
            driver.find_element(By.ID, element_id).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    pytest.fail(f"#{element_id} kept going stale")


def history_state(driver: webdriver.Chrome, session_id: str) -> str | None:
    state: str | None = driver.execute_script(
        "const li = document.querySelector(`#history li[data-session=\"${arguments[0]}\"]`);"
        "return li ? li.dataset.state : null;", session_id)
    return state


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=20)
    return proc.returncode, out


def decide_on_page(driver: webdriver.Chrome, page_url: str, secsignid: str, action: str,
                   service_name: str, address: str | None, screenshot: Path) -> str:
    """Open the page, check the pending card, click `action`; return the session id."""
    driver.get(page_url)
    card = pending_card(driver, secsignid)
    assert card["visible"]
    assert card["title"] == service_name
    if address is not None:
        assert card["lines"][0] == address
    assert f"SecSign ID: {secsignid}" in card["lines"]
    assert card["buttons"] == [f"approve-{card['id']}:Approve", f"deny-{card['id']}:Deny"]
    assert not driver.find_element(By.ID, "empty").is_displayed()
    assert driver.find_element(By.ID, "status").text == "online"
    driver.save_screenshot(str(screenshot))
    click(driver, f"{action}-{card['id']}")
    return str(card["id"])


@pytest.mark.parametrize(("action", "code", "reply", "state"), [
    ("approve", 0, "Received Access-Accept", APPROVED),
    ("deny", 1, "Received Access-Reject", DENIED),
])
def test_phone_page_decides_a_push(start_proxy: Callable[..., RunningProxy],
                                   simulator: BackgroundSimulator, browser: webdriver.Chrome,
                                   radtest: Callable[..., subprocess.Popen[str]], tmp_path: Path,
                                   action: str, code: int, reply: str, state: int) -> None:
    simulator.simulator.set_rules(parse_rules(["*=manual"]))
    proxy = start_proxy()
    login = radtest(proxy.address, PROXY_SECRET, "--calling-station-id", STATION,
                    "--timeout", "30")
    session_id = decide_on_page(browser, f"{simulator.url}/simulator/", "alice.test", action,
                                "Test login at radius-proxy-radtest", STATION,
                                tmp_path / f"phone-pending-{action}.png")
    returncode, out = finish(login)
    assert returncode == code, out
    assert reply in out
    # the page itself shows the outcome: the card is gone, the history has it
    wait_for(lambda: history_state(browser, session_id) == str(state), 5,
             "the decided session in the page's history", 0.1)
    assert browser.execute_script(_CARDS_JS) == []
    assert browser.find_element(By.ID, "empty").is_displayed()
    assert session_starts(simulator) == 1


def test_readme_demo_walkthrough(browser: webdriver.Chrome,
                                 radtest: Callable[..., subprocess.Popen[str]],
                                 tmp_path: Path) -> None:
    port, simulator_port = free_port(), free_port()
    demo = ManagedProcess(python_module_cmd("demo", "--port", str(port),
                                            "--simulator-port", str(simulator_port)),
                          tmp_path / "demo.log")
    try:
        wait_for(lambda: "radius-proxy demo is running." in demo.output() or not demo.alive(),
                 20, "the demo's banner")
        banner = demo.output()
        assert demo.alive(), banner
        page_url = f"http://127.0.0.1:{simulator_port}/simulator/"
        assert f"Phone page:  {page_url}" in banner
        assert f"127.0.0.1:{port}  (shared secret: {DEMO_SECRET})" in banner
        # the README's command, with this run's port
        login = radtest(f"127.0.0.1:{port}", DEMO_SECRET)
        decide_on_page(browser, page_url, "alice.demo", "approve",
                       "Demo login at radius-proxy-radtest", None,
                       tmp_path / "demo-pending.png")
        returncode, out = finish(login)
        assert returncode == 0, out + demo.output()
        assert "Received Access-Accept" in out
    finally:
        demo.stop()
