"""
Issue 18, acceptance 1: the dashboard in a real headless Chromium (Debian's
C{chromium} and C{chromium-driver}, driven by selenium) against a running
server with two connected laptops and one offline.  Without Chromium the
test fails: CI installs it (tests/debian-packages.txt).

The server runs on this process's reactor, so every blocking selenium call
runs in a thread (C{deferToThread}).
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from bpctunnel.testing.sandbox import free_port, make_sample_tree
from tests.helpers import TIMEOUT
from tests.test_end_to_end import TunnelTestCase

TOKEN = "dashboard-browser-test-token"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: A sparkline point's y (dashboard.js, 18 px high): a minute with no bytes
#: sits on the floor, the busiest minute of the hour at the top.
FLOOR, TOP = 17.0, 1.0
#: Each host's sparkline: the y of each of its points, read in one script
#: (the table is re-rendered every poll, so an element found first could be
#: gone by the time it is read).
SPARKLINES = """
const lines = {};
for (const tr of document.querySelectorAll("#hosts tbody tr")) {
  const line = tr.querySelector("td.throughput polyline");
  lines[tr.dataset.host] = line ? line.getAttribute("points") : null;
}
return lines;
"""


def start_chromium(profile: str):
    """A headless Chromium under selenium; fails with the fix if it is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise AssertionError("selenium is missing: pip install -e '.[test]'")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            raise AssertionError(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,500", f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


class Page:
    """Blocking reads of the dashboard (call them in a thread)."""

    def __init__(self, driver):
        self.driver = driver

    def wait(self, condition, what: str):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, TIMEOUT, poll_frequency=0.1).until(
            lambda _: condition(), message=f"the dashboard never showed {what}")

    def cell(self, host: str, column: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f'tr[data-host="{host}"] td.{column}')

    def rows(self) -> dict:
        """Per host: each cell's text, and the certificate cell's classes."""
        from selenium.webdriver.common.by import By

        table = {}
        for tr in self.driver.find_elements(By.CSS_SELECTOR, "#hosts tbody tr"):
            host = tr.get_attribute("data-host")
            cells = {td.get_attribute("class"): td.text
                     for td in tr.find_elements(By.TAG_NAME, "td")}
            table[host] = {name.split()[0]: text for name, text in cells.items()}
            table[host]["row"] = tr.get_attribute("class")
            [table[host]["cert_class"]] = [name for name in cells if name.startswith("cert")]
        return table

    def sparklines(self) -> dict:
        """Per host: the y of each point of its sparkline, oldest minute first."""
        return {host: [float(point.split(",")[1]) for point in points.split()]
                for host, points in self.driver.execute_script(SPARKLINES).items()}

    def open(self, url: str) -> dict:
        self.driver.get(url)
        self.wait(lambda: "2 of 3 connected" in
                  self.driver.find_element("id", "status").text, "2 of 3 hosts connected")
        self.driver.execute_script("window.notReloaded = true;")
        return self.rows()


class DashboardBrowserTests(TunnelTestCase):
    """The page as a browser renders it, and its live refresh."""

    server_settings = {"api_token": TOKEN}

    @inlineCallbacks
    def test_fleet_in_browser(self):
        profile = tempfile.mkdtemp(dir=self.root)
        driver = yield deferToThread(start_chromium, profile)
        self.addCleanup(deferToThread, driver.quit)
        page = Page(driver)
        source = make_sample_tree(self.root / "src", large_file_bytes=20_000_000)
        _, port1, _ = yield self.connected_client("laptop1", {"m": source})
        yield self.connected_client("laptop2", {"m": source},
                                    files=self.sandbox.issue_client("laptop2", days=10))
        # Registered, never connected; its rsync secret readable by every local
        # user, which `bpctunnel check` reports.
        self.sandbox.register("laptop3", free_port(), "00" * 32).chmod(0o644)

        rows = yield deferToThread(page.open, f"{self.server.api_url}/dashboard/?token={TOKEN}")
        self.assertEqual(sorted(rows), ["laptop1", "laptop2", "laptop3"])
        self.assertNotIn(TOKEN, driver.current_url)
        for host in ["laptop1", "laptop2"]:
            self.assertEqual(rows[host]["row"], "connected")
            self.assertRegex(rows[host]["state"], r"^connected for \d+ s$")
            self.assertRegex(rows[host]["address"], r"^127\.0\.0\.1:\d+$")
            self.assertEqual(rows[host]["throughput"], "0 B/s")
        self.assertEqual((rows["laptop3"]["row"], rows["laptop3"]["state"]),
                         ("offline", "never seen"))
        self.assertIn("never seen by this server", rows["laptop3"]["problems"])
        # The check of the files runs in a thread: its findings come with a later poll.
        yield deferToThread(page.wait, lambda: "holds laptop3's rsync secret and every local "
                            "user can read it" in page.cell("laptop3", "problems").text,
                            "check's problem for laptop3")
        # Within 30 days: highlighted.
        self.assertEqual((rows["laptop1"]["cert_class"], rows["laptop2"]["cert_class"]),
                         ("cert", "cert expiring"))
        self.assertRegex(rows["laptop1"]["cert"], r"^\d{4}-\d\d-\d\d \(82[45] d\)$")
        self.assertRegex(rows["laptop2"]["cert"], r"^\d{4}-\d\d-\d\d \((9|10) d\)$")
        self.assertIn("its certificate expires in", rows["laptop2"]["problems"])
        # No bytes through any tunnel yet: every sparkline (the last hour, a point a minute)
        # is flat on the floor.
        lines = yield deferToThread(page.sparklines)
        self.assertEqual(sorted(lines), ["laptop1", "laptop2", "laptop3"])
        for host, ys in lines.items():
            self.assertEqual((len(ys), set(ys)), (60, {FLOOR}), host)

        # A transfer through laptop1's tunnel moves its figure, without a reload.
        pulled = self.pull_and_compare(port1, "m", source)
        moving = deferToThread(page.wait, lambda: page.cell("laptop1", "throughput").text
                               not in ("0 B/s", ""), "laptop1's throughput move")
        yield pulled
        yield moving.addTimeout(TIMEOUT, reactor)
        figure = yield deferToThread(lambda: page.cell("laptop1", "throughput").text)
        self.assertRegex(figure, r"^\d+(\.\d)? (B|KiB|MiB|GiB)/s$")
        # ... and its sparkline rises (the history samples the tunnels' byte counts every
        # SAMPLE_INTERVAL; the page polls the API): the pull's minute at the top.
        rising = deferToThread(page.wait, lambda: len(set(page.sparklines()["laptop1"])) > 1,
                               "laptop1's sparkline rise")
        yield rising.addTimeout(TIMEOUT, reactor)
        lines = yield deferToThread(page.sparklines)
        self.assertEqual((min(lines["laptop1"]), max(lines["laptop1"])), (TOP, FLOOR))
        self.assertEqual(set(lines["laptop2"]), {FLOOR})
        still = yield deferToThread(driver.execute_script, "return window.notReloaded;")
        self.assertIs(still, True)
        screenshot = self.root / "dashboard.png"
        saved = yield deferToThread(driver.save_screenshot, str(screenshot))
        self.assertTrue(saved)
        self.assertGreater(screenshot.stat().st_size, 1000)
