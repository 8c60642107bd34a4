"""A real browser and a real migration behind it, for the dashboard's browser tests.

The browser is Debian's ``chromium`` driven through Debian's ``chromium-driver`` by Selenium,
both named by path: Selenium Manager (which would download a browser or a driver) is never asked
for either, and :func:`no_selenium_manager` turns any attempt into a test failure. A missing
browser is a failure that says how to install it (``scripts/test`` installs it when it can),
never a skip.

The migration is the bundled Perkville sandbox on loopback, and ``perkbridge backfill``,
``perkbridge keys create`` and ``perkbridge serve`` as subprocesses on one SQLite state database,
exactly as an operator runs them. The sandbox runs in the test's process (a real HTTP server on
loopback) so a test can break a record at the source and fix it again, as
``tests/bridge/test_deadletters_cli.py`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from connectors.perkville.sandbox import Sandbox
from tests.bridge.conftest import SPACE, subprocess_env
from tests.bridge.test_metrics import start_serve, stop_serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = "chromium chromium-driver"
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)
DESKTOP = (1280, 800)
PHONE = (390, 844)
WAIT_SECONDS = 60  # an explicit wait's limit: two CPUs are shared by the whole suite
CLI_TIMEOUT = 300


def missing_browser() -> str | None:
    """Why the browser cannot run here, or ``None`` when Debian's chromium and its driver are installed."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return None
    return (
        f"the dashboard's browser tests need Debian's {PACKAGES}, and {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing: run `apt-get install -y {PACKAGES}` as root "
        "(scripts/test does it when it runs as root or with sudo)"
    )


def no_selenium_manager(*args: Any, **kwargs: Any) -> NoReturn:
    """Stands in for ``SeleniumManager.binary_paths`` during the tests: it would download a driver
    or a browser, and the browser and driver are always named by path."""
    raise AssertionError("Selenium Manager was asked for a browser or driver; the tests name Debian's")


def open_browser(profile: Path, size: tuple[int, int] = DESKTOP, *, phone: bool = False,
                 log: Path | None = None) -> WebDriver:
    """Headless chromium with a fresh profile in ``profile`` (no cookies: a new browser context) and a
    viewport of exactly ``size`` CSS pixels (``phone``: a touch screen's mobile layout)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    service = Service(str(CHROMEDRIVER), log_output=str(log) if log is not None else subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        # --window-size counts the window's frame; the page itself gets exactly ``size``.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": phone},
        )
        driver.set_page_load_timeout(WAIT_SECONDS)
    except Exception:
        driver.quit()
        raise
    return driver


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """``condition``'s first truthy answer; fails naming ``what`` and the page it was on."""
    # A page being replaced leaves stale elements behind for a moment: look again.
    waiting = WebDriverWait(driver, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,))
    return waiting.until(condition, message=f"waited {WAIT_SECONDS}s for {what} on {driver.current_url}")


def element(driver: WebDriver, css: str) -> WebElement:
    """The element ``css`` selects, once it is in the page."""
    found: WebElement = wait_for(driver, lambda d: (d.find_elements(By.CSS_SELECTOR, css) or [None])[0], css)
    return found


def path_of(driver: WebDriver) -> str:
    """The path of the page the browser shows (no query)."""
    return str(driver.execute_script("return window.location.pathname"))


def sign_in(driver: WebDriver, base: str, key: str, then: str = "/dashboard") -> None:
    """Sign in through the form, as an operator does, and wait for the page it leads to."""
    driver.get(f"{base}/dashboard/login?next={then}")
    element(driver, "#signin-form #key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin").click()
    wait_for(driver, lambda d: path_of(d) == then and d.find_elements(By.CSS_SELECTOR, "form.signout"),
             f"the signed-in page {then}")


@dataclass
class Site:
    """A migrated business served by ``perkbridge serve`` (``url``), and what made it."""

    url: str
    box: Sandbox
    db_url: str
    env: dict[str, str]
    config: Path
    business: str
    backfill: dict[str, Any]
    reconcile: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    broken: list[int] = field(default_factory=list)

    def perkbridge(self, *args: str) -> subprocess.CompletedProcess[str]:
        return perkbridge(self.env, *args)

    def json(self, *args: str) -> Any:
        done = self.perkbridge(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def fix_at_source(self, txn_id: int) -> None:
        """The Perkville side of a repair: the broken row is a valid earn again."""
        ledger = self.box.ledger
        with ledger.lock:
            ledger.txns[txn_id].classification = "EARN"
            ledger.version += 1


def perkbridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``perkbridge ARGS`` in a process of its own (its config file: ``PERKBRIDGE_CONFIG``)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )


def break_at_source(box: Sandbox, n: int) -> list[int]:
    """``n`` ACTIVE earning rows turn unmappable at the source (a classification nobody knows)."""
    ledger = box.ledger
    with ledger.lock:
        victims = [t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points and
                   t.classification == "EARN"][:n]
        for txn in victims:
            txn.classification = "MYSTERY"
        ledger.version += 1
    return [t.id for t in victims]


@contextmanager
def migrated_site(workdir: Path, *, members: int, transactions: int, broken: int) -> Iterator[Site]:
    """The sandbox with ``broken`` unmappable rows, backfilled by ``perkbridge backfill`` into a fresh
    SQLite state database, keys for both dashboard scopes, and ``perkbridge serve`` over it."""
    box = Sandbox(seed=17, members=members, transactions=transactions)
    box.start()
    try:
        db_url = f"sqlite:///{workdir / 'state.db'}"
        config = workdir / "perkbridge.toml"
        config.write_text("[perkville]\npage_size = 100\nrequests_per_second = 1000\n")
        # Every process reads the same file, serve too (its overview shows the configured rate ceiling).
        env = subprocess_env(box, db_url, PERKAMO_SPACE=SPACE, PERKBRIDGE_LOG_FORMAT="plain",
                             PERKBRIDGE_CONFIG=str(config))
        victims = break_at_source(box, broken)
        done = perkbridge(env, "backfill", "--json")
        assert done.returncode == 0, done.stderr
        site = Site(url="", box=box, db_url=db_url, env=env, config=config, business=str(box.business_ids[0]),
                    backfill=json.loads(done.stdout), broken=victims)
        # The members behind the broken rows differ: reconcile says so (exit 1) and logs its run.
        done = site.perkbridge("reconcile", "--json")
        assert done.returncode == 1, done.stderr
        site.reconcile = json.loads(done.stdout)
        for scope in ("admin:config", "dashboard"):
            site.keys[scope] = site.json("keys", "create", "--scope", scope)["key"]
        server, site.url = start_serve(env)
        try:
            yield site
        finally:
            stop_serve(server)
    finally:
        box.stop()
