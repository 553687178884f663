"""The browser UI (kronk/ui) in a real browser: Debian's Chromium driven by Playwright, against the real Serve
app and the local Hub stand-in (serving a copy of SmolLM2 slowly, so a pull's progress can be watched).

One server and one browser for the module; the tests run in order (the pull first, the keys last: creating a
key turns keys on for the running server). Every page's console errors, page errors, failed requests and
4xx/5xx answers are collected and must be none (a request the UI closes on purpose, the stop button or a page
it leaves, ends as net::ERR_ABORTED: that is not a failure). With ``KRONK_UI_SCREENSHOTS=1`` the tests write
docs/ui-<page>.png (1280x800): ``KRONK_UI_SCREENSHOTS=1 .venv/bin/pytest tests/integration/test_ui_browser.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api
import pytest

from kronk.security.keys import KeyStore
from tests.helpers import GEMMA
from tests.hubserver import HubServer, make_gguf
from tests.integration.utils import serve_app
from tests.models import smollm_path
from tests.waiting import until

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # `make browser` installs it

MODEL = "uitest-smol"  # a catalog entry of the test's home, served by the Hub stand-in
REPO = "org/uitest-smol-GGUF"
FILE = "SmolLM2-uitest-Q4_1.gguf"
GATED = "uitest-gated"  # a gated repo: its pull fails without the server's Hugging Face token
CATALOG = f"""models:
  - name: {MODEL}
    family: smollm2
    description: SmolLM2 135M Instruct (Q4_1), served by the tests' Hub stand-in.
    hf_repo: {REPO}
    files: [{FILE}]
    quant: Q4_1
    size_bytes: 98000000
    context_length: 8192
    capabilities: [chat, completion]
    license: apache-2.0
  - name: {GATED}
    family: smollm2
    description: A gated repo (accept its license, then set the server's Hugging Face token).
    hf_repo: org/uitest-gated-GGUF
    files: [gated-Q8_0.gguf]
    quant: Q8_0
    size_bytes: 100000
    context_length: 2048
    capabilities: [chat]
    gated: true
    license: other
"""
SETTINGS = {"models": [{"name": GEMMA, "ctx_size": 2048, "parallel": 1, "threads": 1, "num_cpus": 1}],
            "ctx_size": 512, "parallel": 1, "threads": 1, "num_cpus": 1}  # the pool's models: small
SHOTS = Path(__file__).resolve().parents[2] / "docs" if os.environ.get("KRONK_UI_SCREENSHOTS") else None
VIEW = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    if CHROMIUM is None:
        pytest.fail("no Chromium: `make browser` (apt-get install -y chromium)")
    data = Path(smollm_path()).read_bytes()
    hub = HubServer(chunk_size=512 * 1024)
    hub.throttle_s = 0.08  # ~6 MiB/s: the ~94 MiB pull takes ~15 s
    hub.add_repo(REPO, {FILE: data})
    hub.add_repo("org/uitest-gated-GGUF", {"gated-Q8_0.gguf": make_gguf(100_000)}, gated=True, token="hf_secret")
    home = Path(tempfile.mkdtemp(prefix="kronk-ui-"))
    (home / "catalog.yaml").write_text(CATALOG)
    with hub, serve_app({"home": str(home), "hf_endpoint": hub.url, **SETTINGS}) as url:
        yield {"url": url, "home": home, "hub": hub}


class Watch:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests, 4xx/5xx answers."""

    def __init__(self, page: Any):
        self.problems: list[str] = []
        self.allowed: list[tuple[str, int]] = []  # (url regex, status) a step expects
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" and not self._allowed_console(m.text) else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: None if (r.failure or "") == "net::ERR_ABORTED"
                else self.problems.append(f"request failed: {r.method} {r.url}: {r.failure}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.request.method} {r.url}")
                if r.status >= 400 and not self._allowed(r.url, r.status) else None)

    def _allowed(self, url: str, status: int) -> bool:
        return any(re.search(u, url) and status == s for u, s in self.allowed)

    def _allowed_console(self, text: str) -> bool:  # Chromium logs every 4xx as a console error
        return any(f"status of {s} " in text for _, s in self.allowed)

    def check(self) -> None:
        problems, self.problems = self.problems, []
        assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def browser(server) -> Iterator[Any]:
    assert CHROMIUM, "no chromium on PATH: run `make browser` (apt-get install chromium)"
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, server) -> Iterator[tuple[Any, Watch]]:
    pg = browser.new_page(viewport=VIEW)
    pg.set_default_timeout(60_000)
    watch = Watch(pg)
    yield pg, watch
    pg.close()


def go(pg: Any, url: str, name: str) -> None:
    pg.goto(f"{url}/ui/#/{name}")
    pg.wait_for_selector(f"main[data-page={name}]")


def shot(pg: Any, name: str) -> None:
    if SHOTS is not None:
        pg.screenshot(path=str(SHOTS / f"ui-{name}.png"))


def job_done(pg: Any, job_id: str) -> int:
    return int(pg.get_attribute(f"article.job[data-job='{job_id}'] [data-role=bytes]", "data-done") or 0)


def test_root_redirects_to_the_ui_with_a_strict_policy(server):
    url = server["url"]
    r = httpx.get(url + "/", headers={"Accept": "text/html,application/xhtml+xml"}, timeout=30)  # a browser
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert httpx.get(url + "/", timeout=30).status_code != 307  # other clients: the Ollama family's probe
    r = httpx.get(url + "/ui/", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script type=\"module\" src=\"app.js\">" in r.text and "<script>" not in r.text
    assert httpx.get(url + "/ui/app.js", timeout=30).headers["content-type"].startswith("text/javascript")
    assert httpx.get(url + "/ui/../pyproject.toml", timeout=30).status_code == 404


def test_a_pull_survives_leaving_and_reloading_the_page_and_completes(server, page):
    pg, watch = page
    url = server["url"]
    go(pg, url, "catalog")
    pg.wait_for_selector("article.model-card")
    shot(pg, "catalog")
    pg.fill("#cat-search", MODEL)
    card = pg.locator(f"article.model-card[data-model='{MODEL}']")
    card.wait_for()
    assert pg.locator("article.model-card").count() == 1  # the search filters
    pg.select_option("#cat-cap", "embedding")
    until(lambda: pg.locator("article.model-card").count() == 0, 10, "the capability filter to hide it")
    pg.select_option("#cat-cap", "")

    # a failed pull shows its reason and what to do
    pg.fill("#cat-search", "uitest-gated")
    pg.locator(f"article.model-card[data-model='{GATED}'] button.pull").click()
    failed = pg.locator("main[data-page=downloads] article.job[data-status=failed]")
    failed.wait_for()
    assert "gated" in failed.inner_text() and "KRONK_HF_TOKEN" in failed.locator(".job-error").inner_text()

    go(pg, url, "catalog")
    pg.fill("#cat-search", MODEL)
    card.locator("button.pull").click()
    pg.wait_for_selector("main[data-page=downloads] article.job[data-status=running]")
    job_id = pg.get_attribute("article.job[data-status=running]", "data-job")
    until(lambda: job_done(pg, job_id) > 0, 30, "the first bytes")
    first = job_done(pg, job_id)
    row = pg.locator(f"article.job[data-job='{job_id}']")
    assert "ETA" in row.inner_text() and "/s" in row.locator("[data-role=rate]").inner_text()

    go(pg, url, "models")  # leave the page, then reload: the pull goes on in the server
    pg.reload()
    pg.wait_for_selector("main[data-page=models]")
    go(pg, url, "downloads")
    row.wait_for()
    assert pg.locator("article.job").count() == 2  # the same job (and the failed one), not a new one
    if row.get_attribute("data-status") == "running":
        seen = job_done(pg, job_id)
        assert seen > first
        shot(pg, "downloads")
        until(lambda: job_done(pg, job_id) > seen or row.get_attribute("data-status") == "succeeded", 60,
              "the progress to advance")
    until(lambda: row.get_attribute("data-status") == "succeeded", 120,
          lambda: f"the pull to succeed ({pg.inner_text('#jobs')})")
    assert "100.0%" in row.inner_text()
    jobs = httpx.get(url + "/v1/models/pull", timeout=30).json()["data"]
    assert [(j["id"], j["status"]) for j in jobs if j["model"] == MODEL] == [(job_id, "succeeded")]
    assert server["hub"].served[HubServer.key(REPO, FILE)] == Path(smollm_path()).stat().st_size  # downloaded once

    go(pg, url, "models")
    model = pg.locator(f"article.model[data-model='{MODEL}']")
    model.wait_for()
    text = model.inner_text()
    assert "Q4_1" in text and "93.8 MiB" in text and "auto (chosen at load)" in text  # KV type: set at load
    assert model.locator("button.delete").count() == 1 and model.locator("button.load").count() == 1
    watch.check()


def test_a_chat_turn_streams_and_shows_ttft_and_cached_tokens(server, page):
    pg, watch = page
    url = server["url"]
    pg.evaluate("localStorage.clear()")
    pg.goto(f"{url}/ui/#/chat?model={MODEL}")
    pg.wait_for_selector("main[data-page=chat] #chat-input")
    assert pg.input_value("#chat-model") == MODEL
    pg.fill("#chat-temperature", "0")
    pg.dispatch_event("#chat-temperature", "change")
    pg.fill("#chat-max-tokens", "12")
    pg.dispatch_event("#chat-max-tokens", "change")
    pg.fill("#chat-system", "You are brief.")
    streamed: list[str] = []
    pg.on("response", lambda r: streamed.append(r.headers.get("content-type", ""))
          if r.url.endswith("/v1/chat/completions") else None)
    for n, text in enumerate(["Say hi.", "Say hi again."], start=1):
        pg.fill("#chat-input", text)
        pg.click("#chat-send")
        answer = pg.locator(".msg.assistant").nth(n - 1)
        answer.locator("[data-role=ttft]").wait_for(timeout=120_000)
        assert answer.locator(".body").inner_text().strip()
    assert len(streamed) == 2 and all(t.startswith("text/event-stream") for t in streamed), streamed
    ttft = pg.locator(".msg.assistant [data-role=ttft]").last.inner_text()
    assert re.fullmatch(r"TTFT \d+ ms", ttft), ttft
    cached = int(pg.locator(".msg.assistant [data-role=cached]").last.get_attribute("data-cached"))
    assert cached > 0  # turn 2 reuses turn 1's prompt from the slot's KV cache
    assert pg.locator(".msg.assistant [data-role=toks]").count() >= 1
    shot(pg, "chat")
    # the history is the browser's: a reload shows it
    pg.reload()
    pg.wait_for_selector("main[data-page=chat] .msg.assistant [data-role=ttft]")
    assert pg.locator(".msg.user").count() == 2
    watch.check()


MARKDOWN_PROBE = """
async () => {
  const {markdown} = await import("/ui/md.js");
  const div = document.createElement("div");
  div.append(markdown("Hi <img src=x onerror=alert(1)> **bold** _it_ `a<b>`\\n\\n```py\\nprint('<b>x</b>')\\n```\\n\\n"
    + "- one\\n- [ok](https://example.com/a)\\n- [bad](javascript:alert(1))"));
  return {imgs: div.querySelectorAll("img,script,[onerror]").length, strong: div.querySelectorAll("strong").length,
    em: div.querySelectorAll("em").length, code: div.querySelector("pre code").textContent,
    items: div.querySelectorAll("li").length, links: [...div.querySelectorAll("a")].map((a) => [a.href, a.rel]),
    text: div.textContent};
}
"""


def test_model_text_is_rendered_as_markdown_never_as_html(page):
    pg, watch = page
    got = pg.evaluate(MARKDOWN_PROBE)
    assert got["imgs"] == 0 and "<img src=x onerror=alert(1)>" in got["text"]  # shown as text
    assert got["strong"] == 1 and got["em"] == 1 and got["items"] == 3
    assert got["code"] == "print('<b>x</b>')"
    assert got["links"] == [["https://example.com/a", "noopener noreferrer nofollow"]]
    assert "[bad](javascript:alert(1))" in got["text"]
    watch.check()


def test_the_stop_button_cancels_the_generation_and_frees_the_slot(server, page):
    pg, watch = page
    url = server["url"]

    def active() -> int:
        return httpx.get(url + "/v1/stats", timeout=30).json()["models"][GEMMA]["stats"]["active"]

    pg.goto(f"{url}/ui/#/chat?model={GEMMA}")
    pg.wait_for_selector("main[data-page=chat] #chat-input")
    pg.fill("#chat-max-tokens", "1500")
    pg.dispatch_event("#chat-max-tokens", "change")
    pg.fill("#chat-input", "Once upon a time, in a land far away, there lived")
    pg.click("#chat-send")
    pg.wait_for_selector(".msg.assistant.streaming .body p", timeout=120_000)  # tokens are arriving
    until(lambda: active() == 1, 30, "the generation to hold a slot")
    pg.click("#chat-stop")
    t0 = time.monotonic()
    until(lambda: active() == 0, 10, "the slot to be freed after stop")
    assert time.monotonic() - t0 < 10
    finish = pg.locator(".msg.assistant [data-role=finish]").last
    assert finish.inner_text() == "stopped"
    assert pg.is_visible("#chat-send") and not pg.is_visible("#chat-stop")
    watch.check()


def test_the_stats_page_draws_live_charts(server, page):
    pg, watch = page
    url = server["url"]
    go(pg, url, "stats")
    stopped = pg.locator(f"article.model-stats[data-model='{GEMMA}']")  # its one request was stopped: no TTFT
    until(lambda: stopped.count() and int(stopped.locator("[data-role=requests]").inner_text()) > 0, 30,
          f"{GEMMA}'s request")
    section = pg.locator(f"article.model-stats[data-model='{MODEL}']")  # two chat turns
    section.wait_for()
    assert int(section.locator("[data-role=requests]").inner_text()) >= 2
    ttft = section.locator("svg.chart").first
    until(lambda: int(ttft.get_attribute("data-points")) >= 2, 30, "the TTFT chart to have points")
    bars = section.locator("svg.chart").nth(1)
    assert int(bars.get_attribute("data-points")) > 0 and bars.locator("rect.bar").count() > 0
    assert section.locator("path.line").count() >= 3
    assert re.fullmatch(r"\d+ ms", section.locator("[data-role=ttft-p50]").inner_text())
    assert float(section.locator("[data-role=reuse]").inner_text().rstrip(" %")) > 0  # turn 2 reused turn 1
    before = int(ttft.get_attribute("data-points"))
    until(lambda: int(section.locator("svg.chart").first.get_attribute("data-points")) > before, 10,
          "the charts to update")
    section.scroll_into_view_if_needed()
    shot(pg, "stats")
    watch.check()


def test_every_page_fits_a_phone_width(server, browser):
    pg = browser.new_page(viewport={"width": 390, "height": 844})
    watch = Watch(pg)
    try:
        for name in ("catalog", "downloads", "models", "chat", "stats", "keys"):
            go(pg, server["url"], name)
            pg.wait_for_timeout(500)
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= 391, f"{name} is {width} px wide at 390"
            assert pg.is_visible(f"#nav a[data-page={name}]")
        watch.check()
    finally:
        pg.close()


def test_with_keys_a_wrong_key_is_refused_and_a_non_admin_key_sees_no_admin_action(server, browser, page):
    url, home = server["url"], server["home"]
    go(page[0], url, "models")
    page[0].wait_for_selector(f"article.model[data-model='{MODEL}']")
    shot(page[0], "models")
    page[0].goto("about:blank")  # this page has no key: it leaves before keys go on
    page[1].check()
    store = KeyStore(home)
    user_key, _ = store.create(name="ui-user")
    admin_key, _ = store.create(name="ui-admin", admin=True)
    until(lambda: httpx.get(url + "/v1/models", timeout=30).status_code == 401, 30, "keys to be on")

    ctx = browser.new_context(viewport=VIEW)
    pg = ctx.new_page()
    watch = Watch(pg)
    try:
        pg.goto(url + "/")
        pg.wait_for_selector("main[data-page=keys] #key-form")  # asks for a key, before any API call
        watch.allowed = [(r"/v1/auth/whoami$", 401)]
        pg.fill("#key-input", "kronk-not-a-real-key")
        pg.click("#key-submit")
        pg.wait_for_selector("#key-error:not([hidden])")
        assert "refused" in pg.inner_text("#key-error")
        assert pg.evaluate("sessionStorage.getItem('kronk.apiKey')") is None
        watch.check()
        watch.allowed = []

        pg.fill("#key-input", user_key)
        pg.click("#key-submit")
        pg.wait_for_selector(f"main[data-page=models] article.model[data-model='{MODEL}']")
        assert pg.inner_text("#who").startswith("ui-user")
        assert pg.locator("button.delete").count() == 0 and pg.locator("button.load").count() == 0
        assert pg.locator("a.button", has_text="Chat").count() >= 1
        go(pg, url, "catalog")
        pg.wait_for_selector("article.model-card")
        assert pg.locator("button.pull").count() == 0 and pg.locator("#pull-ref").count() == 0
        go(pg, url, "downloads")
        pg.wait_for_selector("article.job[data-status=succeeded]")
        go(pg, url, "keys")
        pg.wait_for_selector("#key-status")
        assert "no admin scope" in pg.inner_text("#key-status")
        shot(pg, "keys")
        # the key lives in this tab's sessionStorage only
        assert pg.evaluate("sessionStorage.getItem('kronk.apiKey')") == user_key
        assert pg.evaluate("Object.values(localStorage).some(v => v.includes('kronk-'))") is False
        watch.check()

        pg.click("#key-forget")
        pg.fill("#key-input", admin_key)
        pg.click("#key-submit")
        card = pg.locator(f"main[data-page=models] article.model[data-model='{MODEL}']")
        card.locator("button.delete").wait_for()
        # an admin unloads the pool model (the state stream updates the card), then deletes it, after a "no"
        if card.get_attribute("data-state") == "loaded":
            card.locator("button.unload").click()
            card.locator("button.load").wait_for()
        card.locator("button.delete").click()
        pg.click("#confirm-cancel")
        assert not pg.is_visible("#confirm") and card.count() == 1
        card.locator("button.delete").click()
        assert MODEL in pg.inner_text("#confirm-text")
        pg.click("#confirm-ok")
        until(lambda: card.count() == 0, 30, "the deleted model to leave the page")
        store_names = [m["name"] for m in httpx.get(url + "/v1/store/models", timeout=30,
                                                    headers={"Authorization": f"Bearer {admin_key}"}).json()["data"]]
        assert MODEL not in store_names
        watch.check()
    finally:
        ctx.close()
        for name in ("ui-user", "ui-admin"):
            store.revoke(name)
