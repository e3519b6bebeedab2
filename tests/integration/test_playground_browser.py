"""The playground in a real browser (headless Chromium) against the real server process.

Debian's ``chromium`` drives the page through Playwright with ``executable_path`` (never
``playwright install``: no download). Where no Chromium is installed the tests skip and say so;
``.ci/run`` installs it, so CI runs them. Each test saves a screenshot under its ``tmp_path``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, JSHandle, Page, expect, sync_playwright

from tests.helpers import ServerProcess, cat_jpeg, encode
from tests.hf_models import build_tiny_clip
from tests.repository import add_colour_text_model, add_default_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
INFERENCE_TIMEOUT_MS = 60_000  # a cold first forward pass on a busy 2-core host
RED = encode(np.full((48, 48, 3), (230, 20, 20), np.uint8), "PNG")
BLUE = encode(np.full((48, 48, 3), (20, 20, 230), np.uint8), "PNG")
KEY = "playground-browser-key"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip(
            "no Chromium installed: the playground browser tests need Debian's `chromium` "
            "(apt-get install chromium; .ci/run installs it)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default model, a tiny random CLIP and the colour-word zero-shot model."""
    repo = tmp_path_factory.mktemp("playground-repository")
    add_default_model(repo)
    build_tiny_clip(repo / "tiny_clip")
    add_colour_text_model(repo, "colours")
    process = ServerProcess(repo, env={"IE_SERVER__DEFAULT_MODEL": "efficientnet_lite0"})
    process.start(tmp_path_factory.mktemp("playground-logs") / "server.log")
    yield process
    process.stop()


@dataclass
class Playground:
    """One page on the playground, with everything it requested and every script problem."""

    page: Page
    server: ServerProcess
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        # A refused request logs "Failed to load resource" (the 415 case does, by design); a
        # Content-Security-Policy violation or a script error is a bug.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(message.text)

    def choose_model(self, name: str) -> None:
        expect(self.page.locator("#status")).to_contain_text(f"{name} · ready")
        self.page.select_option("#model", name)

    def upload(self, path: Path, endpoint: str = "/predict") -> dict[str, object]:
        """Pick ``path`` with the file input; the server's JSON answer."""
        with self.page.expect_response(lambda r: endpoint in r.url, timeout=INFERENCE_TIMEOUT_MS) as info:
            self.page.set_input_files("#file", str(path))
        body: dict[str, object] = info.value.json()
        return body

    def finish(self, tmp_path: Path) -> None:
        """Screenshot, then: nothing but this server was asked for anything, and no script broke."""
        self.page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").stat().st_size > 0
        foreign = [u for u in self.requests if not u.startswith((self.server.url + "/", "blob:", "data:"))]
        assert foreign == []
        assert self.problems == []


@contextlib.contextmanager
def open_playground(browser: Browser, server: ServerProcess, path: str = "/") -> Iterator[Playground]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    state = Playground(page, server)
    page.on("request", lambda request: state.requests.append(request.url))
    page.on("console", state.on_console)
    page.on("pageerror", lambda error: state.problems.append(f"page error: {error}"))
    page.goto(server.url + path)
    try:
        yield state
    finally:
        context.close()


@pytest.fixture
def playground(browser: Browser, server: ServerProcess) -> Iterator[Playground]:
    with open_playground(browser, server) as state:
        yield state


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_the_cat_photo_is_a_cat_with_timings_and_request_id(playground: Playground, tmp_path: Path) -> None:
    page = playground.page
    playground.choose_model("efficientnet_lite0")
    expect(page.locator("#mode-classify")).to_be_checked()
    cat = _write(tmp_path, "chelsea.jpg", cat_jpeg())
    # The file picker works from the keyboard: focus it and press Enter.
    with page.expect_file_chooser() as chooser:
        page.focus("#file")
        page.keyboard.press("Enter")
    with page.expect_response(lambda r: "/predict" in r.url, timeout=INFERENCE_TIMEOUT_MS) as answer:
        chooser.value.set_files(str(cat))
    body = answer.value.json()

    rows = page.locator("#predictions li")
    expect(rows).to_have_count(len(body["predictions"]))
    first = rows.first.locator(".bar-label").inner_text()
    assert first in CAT_CLASSES, first
    assert first == body["predictions"][0]["label"]
    expect(rows.first.locator(".bar-score")).to_have_text(f"{body['predictions'][0]['score']:.4f}")
    for key in ("preprocess", "queue", "inference", "total"):
        expect(page.locator(f"#t-{key}")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    expect(page.locator("#request-id")).to_have_text(body["request_id"])
    assert body["request_id"] == answer.value.headers["x-request-id"]
    # Which version answered (a model may split its traffic between versions).
    assert body["model_version"] == answer.value.headers["x-model-version"]
    answered_by = f"model efficientnet_lite0 · version {body['model_version']}"
    expect(page.locator("#answered-by")).to_have_text(answered_by)
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    playground.finish(tmp_path)


def test_a_text_file_shows_the_servers_own_error(playground: Playground, tmp_path: Path) -> None:
    page = playground.page
    playground.choose_model("efficientnet_lite0")
    body = playground.upload(_write(tmp_path, "notes.txt", b"not an image, just some words\n"))
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "unsupported_media_type"
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-type")).to_have_text("unsupported_media_type")
    expect(page.locator("#error-status")).to_have_text("HTTP 415")
    expect(page.locator("#error-message")).to_have_text(error["message"])
    expect(page.locator("#request-id")).to_have_text(error["request_id"])
    expect(page.locator("#predictions li")).to_have_count(0)
    playground.finish(tmp_path)


def test_zero_shot_and_embedding_with_a_tiny_clip(playground: Playground, tmp_path: Path) -> None:
    """Random weights: the typed labels come back ranked, scores summing to 1, not which wins."""
    page = playground.page
    playground.choose_model("tiny_clip")
    page.check("#mode-zero_shot")
    typed = ["a cat", "a dog", "a rocket"]
    page.fill("#labels", ", ".join(typed))
    body = playground.upload(_write(tmp_path, "chelsea.jpg", cat_jpeg()))
    rows = page.locator("#predictions li")
    expect(rows).to_have_count(3)
    shown = rows.locator(".bar-label").all_inner_texts()
    assert sorted(shown) == sorted(typed)
    assert shown == [p["label"] for p in body["predictions"]]  # type: ignore[attr-defined]
    scores = [float(s) for s in rows.evaluate_all("rows => rows.map(r => r.dataset.score)")]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-3)

    with page.expect_response(lambda r: "/embed" in r.url, timeout=INFERENCE_TIMEOUT_MS) as answer:
        page.check("#mode-embed_image")  # the same image again, as an embedding
    embedding = answer.value.json()
    expect(page.locator("#labels-field")).to_be_hidden()
    expect(page.locator("#dimension")).to_have_text(str(embedding["dimension"]))
    first = ", ".join(f"{v:.4f}" for v in embedding["embeddings"][0][:8])
    expect(page.locator("#values")).to_have_text(f"[{first}, …]")
    expect(page.locator("#predictions li")).to_have_count(0)
    answered_by = f"model tiny_clip · version {embedding['model_version']}"
    expect(page.locator("#answered-by")).to_have_text(answered_by)
    playground.finish(tmp_path)


def test_zero_shot_ranks_the_typed_colour_first(playground: Playground, tmp_path: Path) -> None:
    page = playground.page
    playground.choose_model("colours")
    page.check("#mode-zero_shot")
    page.fill("#labels", "red, blue")
    playground.upload(_write(tmp_path, "red.png", RED))
    expect(page.locator("#predictions li .bar-label")).to_have_text(["red", "blue"])
    with page.expect_response(lambda r: "labels=green" in r.url, timeout=INFERENCE_TIMEOUT_MS):
        page.fill("#labels", "green, red")
        page.press("#labels", "Enter")  # the form's submit runs it again
    expect(page.locator("#predictions li .bar-label")).to_have_text(["red", "green"])
    playground.finish(tmp_path)


def _files_in_the_page(page: Page, name: str, data: bytes) -> JSHandle:
    """A ``DataTransfer`` holding one file, as a drag-and-drop or a paste carries it."""
    return page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode()],
    )


def test_an_image_can_be_dropped_or_pasted(playground: Playground, tmp_path: Path) -> None:
    page = playground.page
    playground.choose_model("colours")
    page.check("#mode-zero_shot")
    page.fill("#labels", "red, blue")
    with page.expect_response(lambda r: "/predict" in r.url, timeout=INFERENCE_TIMEOUT_MS):
        page.dispatch_event("#drop", "drop", {"dataTransfer": _files_in_the_page(page, "red.png", RED)})
    expect(page.locator("#predictions li .bar-label")).to_have_text(["red", "blue"])
    expect(page.locator("#file-name")).to_contain_text("red.png")
    with page.expect_response(lambda r: "/predict" in r.url, timeout=INFERENCE_TIMEOUT_MS):
        page.evaluate(
            "transfer => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer}))",
            _files_in_the_page(page, "blue.png", BLUE),
        )
    expect(page.locator("#predictions li .bar-label")).to_have_text(["blue", "red"])
    playground.finish(tmp_path)


def test_status_strip_polls_only_while_visible_and_fits_a_narrow_window(
    playground: Playground, tmp_path: Path
) -> None:
    page = playground.page
    page.set_viewport_size({"width": 360, "height": 800})
    for name in ("colours", "efficientnet_lite0", "tiny_clip"):
        expect(page.locator("#status")).to_contain_text(f"{name} · ready · queue 0")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    def polls() -> int:
        return sum(u.endswith("/ready") for u in playground.requests)

    page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", {value: true, configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    page.wait_for_timeout(500)  # let a poll already in flight land
    hidden_at = polls()
    page.wait_for_timeout(4_500)
    assert polls() == hidden_at, "the strip kept polling a hidden tab"
    started = time.monotonic()
    page.evaluate(
        """() => {
            Object.defineProperty(document, "hidden", {value: false, configurable: true});
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )
    while polls() == hidden_at and time.monotonic() - started < 5:
        page.wait_for_timeout(100)
    assert polls() > hidden_at, "polling did not resume when the tab became visible"
    playground.finish(tmp_path)


def test_with_auth_the_page_asks_for_a_key_and_keeps_it_in_the_tab(browser: Browser, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_colour_text_model(repo, "colours")
    env = {
        "IE_AUTH__ENABLED": "true",
        "IE_AUTH__API_KEY_HASHES": json.dumps([hashlib.sha256(KEY.encode()).hexdigest()]),
    }
    guarded = ServerProcess(repo, env=env, headers={"x-api-key": KEY}).start(tmp_path / "server.log")
    try:
        with open_playground(browser, guarded, "/playground") as playground:
            page = playground.page
            expect(page.locator("#error-type")).to_have_text("unauthorized")
            expect(page.locator("#error-message")).to_have_text(
                "a valid API key is required (Authorization: Bearer <key>)"
            )
            expect(page.locator("#key")).to_have_attribute("open", "")
            page.fill("#api-key", KEY)
            page.press("#api-key", "Tab")  # change: reload the models with the key
            expect(page.locator("#error")).to_be_hidden()
            playground.choose_model("colours")
            page.check("#mode-zero_shot")
            page.fill("#labels", "blue, red")
            playground.upload(_write(tmp_path, "red.png", RED))
            expect(page.locator("#predictions li .bar-label")).to_have_text(["red", "blue"])
            stored = page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]")
            assert stored == [1, 0, ""]
            playground.finish(tmp_path)
    finally:
        guarded.stop()
