"""Headless Chromium driven by Selenium, on the system's browser (Debian's `chromium` and `chromedriver`):
nothing is downloaded at run time. Used by the inspector's browser test and `bench.demo_tally`."""

from __future__ import annotations

import os
import shutil

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

INSTALL = "apt-get install -y chromium chromium-driver"


class NoBrowser(RuntimeError):
    pass


def chromium(width: int = 1280, height: int = 1600) -> webdriver.Chrome:
    """A headless Chromium; NoBrowser (saying how to install one) when the system has none."""
    binary = os.environ.get("JISI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("JISI_CHROMEDRIVER") or shutil.which("chromedriver")
    if not binary or not driver:
        raise NoBrowser(f"no chromium/chromedriver on this machine ({INSTALL}, or set JISI_CHROMIUM and "
                        "JISI_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failures
    return webdriver.Chrome(options=options, service=Service(driver))  # a given driver: Selenium Manager stays off


class InspectorPage:
    """The routing inspector (/inspector/) as a user drives it: pick or type a question, pick a method, ask,
    and read what the page drew."""

    def __init__(self, driver: webdriver.Chrome, url: str, timeout_s: float = 120.0) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.url = driver, url.rstrip("/") + "/inspector/"
        self.wait = WebDriverWait(driver, timeout_s)

    def _el(self, element_id: str):  # noqa: ANN202 (a selenium WebElement)
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def open(self, api_key: str = "") -> list[str]:
        """Load the page; the test questions it offers (once its settings have been read)."""
        from selenium.webdriver.common.by import By

        self.driver.get(self.url)
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        if api_key:
            self._el("api-key").send_keys(api_key)
        self.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example option")) > 1
                        or self._el("error").is_displayed())
        return [o.text for o in self.driver.find_elements(By.CSS_SELECTOR, "#example option")][1:]

    def ask(self, *, example: int | None = None, question: str | None = None, method: str = "jisi") -> None:
        """Ask one question (the `example`-th test question, or `question` typed in) and wait for the answer or
        the error to be drawn."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        if example is not None:
            Select(self._el("example")).select_by_index(example + 1)
        if question is not None:
            self._el("question").clear()
            self._el("question").send_keys(question)
        self.driver.find_element(By.CSS_SELECTOR, f"input[name=method][value={method}]").click()
        self._el("ask").click()
        self.wait.until(lambda d: not self._el("ask").get_attribute("disabled")
                        and not self._el("busy").is_displayed())

    def error(self) -> str | None:
        box = self._el("error")
        return box.text if box.is_displayed() else None

    def drawn(self) -> dict:
        """What the result shows: the chosen model, verdicts, costs, the score rows, the calls, the support set."""
        from selenium.webdriver.common.by import By

        def rows(table: str) -> list[list[str]]:
            return [[c.text for c in r.find_elements(By.CSS_SELECTOR, "th, td")]
                    for r in self.driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]

        bars = self.driver.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
        return {
            "chosen": self._el("chosen-model").text, "verdict": self._el("router-verdict").text,
            "cost": self._el("router-cost").text, "calls": self._el("router-calls").text,
            "shortcut": self._el("shortcut").text, "answer": self._el("answer").text,
            "baseline": self._el("baseline-model").text, "baseline_verdict": self._el("baseline-verdict").text,
            "baseline_cost": self._el("baseline-cost").text,
            "score_rows": [{"model": r.get_attribute("data-model"), "classes": r.get_attribute("class"),
                            "bar_px": [b.value_of_css_property("width") for b in
                                       r.find_elements(By.CSS_SELECTOR, "span.fill")]} for r in bars],
            "call_rows": rows("calls"), "support_rows": rows("support"),
        }

    def tally(self) -> dict[str, str]:
        ids = ("tally-n", "tally-router-right", "tally-router-acc", "tally-router-cost", "tally-baseline-name",
               "tally-baseline-right", "tally-baseline-acc", "tally-baseline-cost")
        return {i.removeprefix("tally-"): self._el(i).text for i in ids}
