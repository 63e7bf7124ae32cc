"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright), with real
workers running: live counters and chart, a moving progress bar, revoking from the task page,
markup in arguments shown as text, a rate limit set and cleared. The pages' screenshots go to
docs/screenshots/ when UPDATE_SCREENSHOTS=1 (elsewhere to a temporary folder, so a test run
changes no file).

Without /usr/bin/chromium these tests are skipped, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from celeriac.limits import RATE_LIMIT_KEY

from .support import Project, Served, wait_for_task

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
#: Milliseconds the page gets to show a change (events arrive within about a second).
SHOWN = 30_000


def require_chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing; the browser tests need it (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, open_dashboard: Served) -> Iterator[Any]:
    context = browser.new_context(base_url=open_dashboard.url,
                                  viewport={"width": 1200, "height": 760})  # fmt: skip
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


def screenshot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def known(served: Served, task_id: str) -> None:
    """Wait until the dashboard has the task's events (so its page is not a 404)."""
    with served.client() as client:
        wait_for_task(client, task_id, lambda task: True)


def number(page: Any, selector: str) -> int:
    return int(page.text_content(selector).rstrip("+"))


def shows(page: Any, what: str, check: Callable[[Any], bool], script: str = "") -> Any:
    """Wait until ``check`` holds for the text of ``what`` (or, with ``script``, for the value
    of ``script`` run on that element). Polled from here: the page's CSP forbids the string
    evaluation that Playwright's ``wait_for_function`` needs, as it should."""

    def read() -> Any:
        if script:
            return page.eval_on_selector(what, script)
        return page.text_content(what) if page.query_selector(what) else None

    seen: list[Any] = []

    def holds() -> bool:
        seen[:] = [read()]
        return check(seen[0])

    wait_until(holds, SHOWN / 1000, f"{what} in the page")
    return seen[0]


def test_overview_counters_and_chart_update_live(
    page: Any, project: Project, shots: Path
) -> None:
    page.goto("/")
    page.wait_for_selector("#live.on", timeout=SHOWN)
    shows(page, "[data-field=workers_online]", lambda text: int(text) >= 1)
    before = number(page, "[data-field=succeeded]")
    charted = int(page.get_attribute("svg[data-chart=rate]", "data-total") or 0)
    for i in range(25):
        project.send("add", i, i)
    project.send("fail", "on purpose")
    shows(page, "[data-field=succeeded]", lambda text: int(text) >= before + 25)
    shows(page, "svg[data-chart=rate]", lambda total: int(total) >= charted + 26,
          "chart => chart.dataset.total")  # fmt: skip
    assert page.locator("svg[data-chart=rate] polyline").count() == 2
    assert page.locator("svg[data-chart=depths] polyline").count() >= 1
    assert "online" in page.text_content("tbody[data-rows=worker_rows]")
    screenshot(page, shots, "overview")


def test_progress_bar_moves(
    page: Any, project: Project, open_dashboard: Served, shots: Path
) -> None:
    release = project.path / "browser-steps"
    task = project.send("steps", str(release), 4)
    try:
        known(open_dashboard, task)
        page.goto(f"/tasks/{task}")
        page.wait_for_selector("#live.on", timeout=SHOWN)
        for done in range(5):
            shows(page, "#progress", lambda value, d=done: value == d / 4,
                  "bar => bar.hidden ? null : bar.value")  # fmt: skip
            if done == 2:
                assert page.text_content("#progress-text") == "50%"
                screenshot(page, shots, "task")
            Path(f"{release}.{done}").write_text("go")
    finally:
        for done in range(5):  # a failed test must not leave the worker's slot taken
            Path(f"{release}.{done}").write_text("go")
    shows(page, "[data-field=state]", lambda text: text == "SUCCESS")
    assert page.text_content("#progress-text") == "100%"
    assert "succeeded" in page.text_content("tbody[data-rows=timeline]")


def test_revoke_a_task_from_its_page(page: Any, project: Project, open_dashboard: Served) -> None:
    task = project.app.send_task("dashproj.add", (1, 2), countdown=2.0).id
    known(open_dashboard, task)
    page.goto(f"/tasks/{task}")
    page.click("form:has(input[value=revoke]) button")
    page.wait_for_selector("#note", timeout=SHOWN)
    assert f"Revoked {task}" in page.text_content("#note")
    shows(page, "[data-field=state]", lambda text: text == "REVOKED")
    assert "revoked" in page.text_content("tbody[data-rows=timeline]")


def test_terminate_a_running_task_from_its_page(
    page: Any, project: Project, open_dashboard: Served
) -> None:
    started, release = project.path / "browser-started", project.path / "browser-release"
    task = project.send("hold", str(started), str(release))
    try:
        known(open_dashboard, task)
        page.goto(f"/tasks/{task}")
        shows(page, "[data-field=state]", lambda text: text == "STARTED")
        page.click("form:has(input[value=terminate]) button")  # confirm() is accepted
        shows(page, "[data-field=state]", lambda text: text == "REVOKED")
    finally:
        release.write_text("go")


MARKUP = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


def test_markup_in_arguments_is_shown_as_text(page: Any, project: Project, shots: Path) -> None:
    page.goto("/tasks")
    page.wait_for_selector("#live.on", timeout=SHOWN)
    task = project.send("fail", MARKUP)  # arrives while the list is open: a row the script adds
    row = f"tr[data-key='{task}']"
    shows(page, f"{row} [data-col=state]", lambda text: text == "FAILURE")
    assert MARKUP in page.text_content(f"{row} [data-col=args]")
    screenshot(page, shots, "tasks")
    page.goto(f"/tasks/{task}")
    assert MARKUP in page.text_content("pre[data-field=args]")
    assert MARKUP in page.text_content("pre[data-field=exception]")
    assert page.evaluate("window.pwned") is None
    assert page.locator("main script, main img").count() == 0


def test_workers_and_queues_pages(page: Any, project: Project, shots: Path) -> None:
    broker = project.app.broker
    broker.publish("browser-q", b"not a task message")
    [delivery] = broker.fetch(["browser-q"], 1, timeout=5)
    broker.dead_letter(delivery, "undecodable")
    page.goto("/workers")
    page.wait_for_selector("tbody[data-rows=workers] tr", timeout=SHOWN)
    assert "online" in page.text_content("tbody[data-rows=workers]")
    screenshot(page, shots, "workers")
    page.goto("/queues")
    assert "undecodable" in page.text_content("tbody[data-rows=letters]")
    screenshot(page, shots, "queues")
    row = f"tr[data-key='{delivery.message_id}']"
    page.click(f"{row} button")
    page.wait_for_selector("#note", timeout=SHOWN)
    assert f"Redrove {delivery.message_id}." in page.text_content("#note")
    assert broker.size("browser-q") == 1


def test_set_and_clear_a_rate_limit_from_the_workers_page(page: Any, project: Project) -> None:
    key, form = RATE_LIMIT_KEY + "dashproj.echo", "form.rate-limit"
    try:
        page.goto("/workers")
        page.fill(f"{form} input[name=task]", "dashproj.echo")
        page.fill(f"{form} input[name=rate]", "fast")
        page.click(f"{form} button")
        page.wait_for_selector("#note.error", timeout=SHOWN)
        assert "Not done: bad rate 'fast'" in page.text_content("#note")
        page.fill(f"{form} input[name=task]", "dashproj.echo")
        page.fill(f"{form} input[name=rate]", "50/s")
        page.click(f"{form} button")
        page.wait_for_selector("#note:not(.error)", timeout=SHOWN)
        assert "Rate limit of dashproj.echo set to 50/s" in page.text_content("#note")
        assert project.app.broker.get(key) == b"50/s"
        page.click("table.limits tr[data-key='dashproj.echo'] button")
        shows(page, "#note", lambda text: "cleared" in (text or ""))
        assert project.app.broker.get(key) is None
        assert page.locator("table.limits").count() == 0
    finally:
        project.app.control.rate_limit("dashproj.echo", None)
