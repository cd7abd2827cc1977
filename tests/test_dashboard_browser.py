"""The dashboard in a real browser against a real running swarm.

Three hospital nodes (real processes, a real anvil devnet, real rounds) and Debian's
Chromium, driven headless by Playwright. Screenshots are kept in runs/test-artifacts/.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account import Account
from playwright.sync_api import BrowserContext, Page, sync_playwright

from apiary.core.tls import create_self_signed
from apiary.node.identity import Identity
from apiary.node.invites import InviteBook
from apiary.tools.demo import DemoOptions, LocalSwarm

pytestmark = [pytest.mark.chain, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
HOSPITALS = ("cleveland", "hungary", "va")
SPONSOR = "cleveland"
"""The first founder: it holds the contract's admin role, so its invites admit."""
TOKEN = "dashboard-test-admin-token"
WAIT_MS = 150_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
SHOWN_ROUNDS = 6
"""Rounds on the chart when the screenshot is taken (a round takes seconds here)."""


@dataclass
class PageLog:
    """What a page said and asked for while it was open."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        return page

    def remote(self) -> list[str]:
        """Every request that left this machine (data: and blob: URLs stay in the page)."""
        return [url for url in self.requests
                if urlsplit(url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(url).hostname not in LOCAL_HOSTS]


def wait_on(page: Page, condition: Callable[[], bool], what: str,
            timeout_ms: int = WAIT_MS) -> None:
    """Poll `condition` from here: the page's policy forbids evaluating strings in it, as
    Playwright's wait_for_function would."""
    waited = 0
    while not condition():
        if waited > timeout_ms:
            raise AssertionError(f"timed out after {timeout_ms / 1000:.0f} s waiting for {what}")
        page.wait_for_timeout(500)
        waited += 500


def finished(swarm: LocalSwarm, round_number: int) -> bool:
    return all(any(r["round"] >= round_number for r in swarm.history(n)) for n in HOSPITALS)


@pytest.fixture(scope="module")
def chromium() -> Iterator[BrowserContext]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}: run "
                    "`apt-get install -y chromium chromium-driver` (make test installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apiary-chromium-") as profile, \
            sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture(scope="module")
def swarm(chromium: BrowserContext, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[LocalSwarm]:
    """Three founders running rounds until the tests end; round 1 is done when it yields."""
    options = DemoOptions(rounds=0, out_dir=tmp_path_factory.mktemp("dashboard"),
                          admin_token=TOKEN, round_deadline_s=20.0)
    with LocalSwarm(options, HOSPITALS) as running:
        running.found()
        running.start_all()
        running.wait_until(lambda: finished(running, 1), 180, "round 1 at every node")
        yield running


@pytest.fixture
def page(chromium: BrowserContext) -> Iterator[tuple[Page, PageLog]]:
    log = PageLog()
    opened = log.watch(chromium.new_page())
    yield opened, log
    opened.close()


def open_dashboard(page: Page, swarm: LocalSwarm) -> str:
    url = swarm.nodes[SPONSOR].api_url
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    return url


def invites_at(swarm: LocalSwarm) -> dict[str, dict[str, object]]:
    return InviteBook(swarm.state_dir(SPONSOR)).snapshot()


def test_the_dashboard_shows_members_and_the_live_round_and_the_chart_grows(
    swarm: LocalSwarm, page: tuple[Page, PageLog],
) -> None:
    tab, log = page
    url = open_dashboard(tab, swarm)
    assert urlsplit(tab.url).path == "/dashboard"
    members = tab.locator("#members tbody tr")
    assert members.count() == 3
    names = " ".join(members.all_inner_texts())
    assert all(name in names for name in HOSPITALS), names
    for address in swarm.addresses.values():
        assert tab.locator(f"#members tr[data-address='{address}']").count() == 1
    live = tab.locator("#live-round")
    live.wait_for(timeout=30_000)
    open_round = httpx.get(f"{url}/v1/overview", timeout=10).json()["chain"]["current_round"]
    assert "live:" in live.inner_text()
    assert int(live.locator("td").first.inner_text()) >= open_round - 1
    assert tab.locator("#chain").inner_text().count("reachable") == 1
    assert "ETH" in tab.locator("#chain").inner_text()
    assert "days left" in tab.locator("#certificate").inner_text()

    chart = tab.locator("#accuracy-chart")
    before = int(chart.get_attribute("data-points") or 0)
    assert before >= 1
    wait_on(tab, lambda: int(chart.get_attribute("data-points") or 0) > before,
            "the chart to draw the next round")
    assert tab.locator("#accuracy-chart circle.point-test").count() > before
    assert tab.locator("#accuracy-chart path.series-test").count() == 1
    newest = tab.locator("#rounds tbody tr[data-round]").first
    assert newest.locator("td").nth(7).inner_text().startswith("0x")  # a transaction hash
    wait_on(tab, lambda: "about" in tab.locator("#chain").inner_text(),
            "an estimate of the rounds the balance pays for")
    wait_on(tab, lambda: int(chart.get_attribute("data-points") or 0) >= SHOWN_ROUNDS,
            f"{SHOWN_ROUNDS} rounds for the screenshot")
    live.wait_for(timeout=30_000)  # a round is always open: the next opens as one ends
    tab.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)
    assert log.errors == []
    assert log.remote() == []


def test_a_wrong_token_is_refused_and_creates_no_invite(
    swarm: LocalSwarm, page: tuple[Page, PageLog],
) -> None:
    tab, log = page
    open_dashboard(tab, swarm)
    before = invites_at(swarm)
    invite = tab.locator("#create-invite")
    assert invite.is_disabled()  # read-only without a token
    tab.fill("#token", "not-the-admin-token-0123456789")
    tab.click("#create-invite")
    message = tab.locator("#action-message")
    message.filter(has_text="refused").wait_for(timeout=10_000)
    assert "wrong bearer token" in message.inner_text()
    assert tab.locator("#invite-result").is_hidden()
    tab.click("#check-token")
    message.filter(has_text="Token refused").wait_for(timeout=10_000)
    assert invites_at(swarm) == before
    tab.screenshot(path=ARTIFACTS / "dashboard-refused.png")
    assert log.errors and all("401" in e for e in log.errors), log.errors


def test_swagger_ui_renders_from_the_nodes_own_assets(
    swarm: LocalSwarm, page: tuple[Page, PageLog],
) -> None:
    tab, log = page
    url = swarm.nodes[SPONSOR].api_url
    tab.goto(f"{url}/docs")
    tab.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert f"Apiary node {SPONSOR}" in tab.locator(".swagger-ui .info .title").inner_text()
    tab.locator(".opblock").first.wait_for(timeout=10_000)
    assert tab.locator(".opblock").count() > 10
    assert f"{url}/static/docs/swagger-ui-bundle.js" in log.requests
    tab.screenshot(path=ARTIFACTS / "docs.png")
    assert log.errors == []
    assert log.remote() == []


def test_an_invite_made_on_the_page_is_shown_once_and_admits_a_node(
    swarm: LocalSwarm, page: tuple[Page, PageLog],
) -> None:
    tab, log = page
    url = open_dashboard(tab, swarm)
    before = len(invites_at(swarm))
    tab.fill("#token", TOKEN)
    tab.click("#check-token")
    tab.locator("#action-message").filter(has_text="Token accepted").wait_for(timeout=10_000)
    tab.click("#create-invite")
    tab.locator("#invite-result").wait_for(state="visible", timeout=10_000)
    token = tab.locator("#invite-token").inner_text().strip()
    assert len(token) >= 32
    assert len(invites_at(swarm)) == before + 1
    tab.screenshot(path=ARTIFACTS / "dashboard-invite.png")
    stored = tab.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert TOKEN not in tab.url and token not in tab.url
    tab.click("#invite-done")
    assert token not in tab.content()
    tab.reload()
    tab.wait_for_selector("body[data-loaded=true]")
    assert token not in tab.content() and tab.input_value("#token") == ""
    assert log.errors == []

    newcomer = Identity.create("newcomer")
    reply = httpx.post(f"{url}/v1/members", timeout=60, json={
        "invite": token, "address": Account.from_key(newcomer.private_key).address,
        "x25519_public_key": newcomer.x25519_public, "endpoint": "127.0.0.1:1",
        "tls_certificate": create_self_signed("newcomer", ["127.0.0.1"]).cert.decode(),
        "dataset_size": 100,
        "training": httpx.get(f"{url}/v1/training", timeout=60).json()["config"]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["address"] == newcomer.address
