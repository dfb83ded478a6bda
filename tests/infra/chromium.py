"""Headless Chromium driven by Selenium, to check what the Prefect UI shows a person.

Debian's `chromium` and `chromium-driver` come from one source package, so the driver always
matches the browser. Selenium gets both paths: it never looks for, or downloads, a browser or
a driver of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from local_daemons import MissingPrerequisite, require_command

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

INSTALL_HINT = "run scripts/dev/install_packages.sh (apt-get install chromium chromium-driver)"


def start_chromium(width: int = 1600, height: int = 1000) -> WebDriver:
    browser = require_command("chromium", INSTALL_HINT)
    driver = require_command("chromedriver", INSTALL_HINT)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as missing:
        raise MissingPrerequisite(f"selenium not installed: run python3 scripts/bootstrap.py ({missing})") from None

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: Chromium's sandbox refuses to start as root, which CI is.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def page_text(driver: WebDriver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def click_text(driver: WebDriver, text: str) -> None:
    """Click the visible element whose whole text is `text`, as a person clicks a tab or a link."""
    from selenium.webdriver.common.by import By

    innermost = f"//*[normalize-space(.)='{text}' and not(*[normalize-space(.)='{text}'])]"
    shown = [element for element in driver.find_elements(By.XPATH, innermost) if element.is_displayed()]
    assert shown, f"{driver.current_url} shows nothing to click that reads {text!r}"
    shown[0].click()


def wait_for_text(driver: WebDriver, *texts: str, timeout: float = 60) -> str:
    """The page's visible text once it shows every one of `texts`: the UI renders after its API calls."""
    deadline = time.monotonic() + timeout
    while True:
        shown = page_text(driver)
        if all(text in shown for text in texts):
            return shown
        if time.monotonic() > deadline:
            missing = [text for text in texts if text not in shown]
            raise AssertionError(f"{driver.current_url} never showed {missing}; it showed:\n{shown[:3000]}")
        time.sleep(0.5)
