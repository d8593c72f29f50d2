"""The viewer in headless Chromium, with JavaScript off (it needs none): load, filter by actor,
page, open an event, see before → after side by side, download CSV, tenant isolation; and,
with JavaScript on, hostile values that stay inert text."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from support.browser import playwright_session
from support.servers import serve_wsgi
from support.viewer import HOSTILE, MARKER, ORG1, ORG2, groups_of, tenant_store

from audit_instrument.viewer import wsgi_app

N = 40
TOTAL = 2 * N + 2  # both organisations and the two hostile events


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The viewer under a real WSGI server; the user comes in a cookie, as a session's would."""
    store = tenant_store(tmp_path_factory.mktemp("viewer") / "audit.db", N)
    recorded: list[Any] = []  # reads recorded aside, so the store holds the same events

    def user(environ: dict[str, Any]) -> str | None:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", "")).get("user")
        return None if cookie is None else cookie.value

    app = wsgi_app(store, authorize=lambda environ: groups_of(user(environ)),
                   actor=lambda environ: (user(environ), "reader"), record=recorded.append)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.viewer.chain.wait(30)
        store.close()


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with playwright_session() as start:
        yield start


@pytest.fixture(scope="module")
def browser(launch: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One Chromium for the module, JavaScript off."""
    return launch(tmp_path_factory.mktemp("chromium") / "profile", java_script_enabled=False)


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser: Any, console_errors: list[str]) -> Iterator[Any]:
    """A new tab; console errors (a Content-Security-Policy violation, say) fail the test."""
    tab = browser.new_page()
    tab.on("console", lambda message: console_errors.append(message.text)
           if message.type == "error" else None)
    yield tab
    tab.close()
    assert console_errors == []


def as_user(page: Any, user: str) -> Any:
    page.context.clear_cookies()
    page.context.add_cookies([{"name": "user", "value": user, "domain": "127.0.0.1",
                               "path": "/"}])
    return page


def rows(page: Any) -> Any:
    return page.locator("table.events > tbody > tr")


def test_load_shows_the_newest_events_the_chart_and_the_badge(page: Any, site: str) -> None:
    as_user(page, "admin").goto(site + "/")
    assert page.title() == "Audit log"
    assert rows(page).count() == 50
    assert page.locator("section.activity svg").is_visible()
    assert page.locator("a.badge").is_visible()
    first_when = rows(page).nth(2).locator("td.when").inner_text()
    last_when = rows(page).nth(49).locator("td.when").inner_text()
    assert first_when > last_when


def test_filter_by_actor(page: Any, site: str) -> None:
    as_user(page, "admin").goto(site + "/")
    page.fill("#f-actor", "bob_1")
    page.click("button:text('Filter')")
    assert "actor=bob_1" in page.url
    actors = rows(page).locator("td:nth-child(3) span")
    expected = len([i for i in range(N) if (2 * i + 1) % 3 == 1])
    assert actors.count() == expected
    assert {actors.nth(i).get_attribute("title") for i in range(expected)} == {"bob_1"}
    assert page.input_value("#f-actor") == "bob_1"


def test_paging_through_every_event_once(page: Any, site: str) -> None:
    as_user(page, "admin").goto(site + "/?limit=25")
    seen: list[str] = []
    for _ in range(10):
        links = rows(page).locator("a:text('details')")
        seen += [links.nth(i).get_attribute("href") for i in range(links.count())]
        older = page.locator("a[rel=next]")
        if older.count() == 0:
            break
        older.click()
    assert len(seen) == TOTAL == len(set(seen))
    page.click("text=Newest")
    assert rows(page).count() == 25


def test_open_an_event_and_see_before_and_after_side_by_side(page: Any, site: str) -> None:
    as_user(page, "admin").goto(site + f"/?target=doc_12&group={ORG1}")
    row = rows(page).first
    before, after = row.locator("td.before"), row.locator("td.after")
    assert before.inner_text() == "draft 12" and after.inner_text() == "final 12"
    left, right = before.bounding_box(), after.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2
    row.locator("a:text('details')").click()
    assert "event?id=organization_1-12" in page.url
    assert page.locator("h1").inner_text().startswith("document.update")
    changes = page.locator("table.changes.wide tbody tr").first
    assert changes.locator("th").inner_text() == "title"
    assert changes.locator("td.before").inner_text() == "draft 12"
    assert changes.locator("td.after").inner_text() == "final 12"
    assert '"idempotency_key": "organization_1-12"' in page.locator("pre.record").inner_text()


def test_download_the_current_filter_as_csv(page: Any, site: str, tmp_path: Path) -> None:
    as_user(page, "admin").goto(site + "/?actor=alice_2")
    with page.expect_download() as download:
        page.click("a:text('CSV')")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".csv"
    with saved.open(encoding="utf-8", newline="") as file:
        header, *data = list(csv.reader(file))
    assert header[:5] == ["occurred_at", "group", "action", "action_type", "actor_id"]
    expected = len([i for i in range(N) if 2 * i % 3 == 2])
    assert len(data) == expected and {row[4] for row in data} == {"alice_2"}


def test_a_tenant_sees_only_their_group(page: Any, site: str, tmp_path: Path,
                                        console_errors: list[str]) -> None:
    as_user(page, "alice").goto(site + "/?limit=500")
    body = page.locator("body").inner_text()
    assert MARKER not in body and "bob0@" not in body and "alice0@example.com" in body
    assert rows(page).count() == N + 2
    options = page.locator("#f-group option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["", ORG1]
    assert MARKER.lower() not in page.locator("section.activity").inner_html()
    missing = page.goto(site + f"/event?id={ORG2}-3")
    assert missing is not None and missing.status == 404
    assert "no such event" in page.locator("body").inner_text()
    page.goto(site + f"/?group={ORG2}")
    assert rows(page).first.inner_text() == "no events match"
    with page.expect_download() as download:
        page.click("a:text('CSV')")
    saved = tmp_path / "alice.csv"
    download.value.save_as(saved)
    assert MARKER not in saved.read_text(encoding="utf-8")
    forbidden = as_user(page, "mallory").goto(site + "/")
    assert forbidden is not None and forbidden.status == 403
    assert len(console_errors) == 2 and all("40" in e for e in console_errors)  # 404, 403
    console_errors.clear()


def test_hostile_values_stay_text_with_javascript_on(launch: Any, site: str,
                                                      tmp_path: Path) -> None:
    context = launch(tmp_path / "profile")  # JavaScript on
    try:
        as_user(tab := context.new_page(), "admin")
        dialogs: list[str] = []
        tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        for path in ("/", "/event?id=hostile-0", "/event?id=hostile-action",
                     f"/?actor={HOSTILE['actor_id']}"):
            tab.goto(site + path)
            assert tab.locator("script").count() == 0
            assert tab.locator("img").count() == 0
            assert tab.locator("svg[onload], b[onmouseover]").count() == 0
        tab.goto(site + "/event?id=hostile-0")
        text = tab.locator("body").inner_text()
        assert HOSTILE["actor_name"] in text and HOSTILE["metadata"]["note"] in text
        tab.goto(site + f"/?actor={HOSTILE['actor_id']}")
        assert tab.input_value("#f-actor") == HOSTILE["actor_id"]
        assert dialogs == []
    finally:
        context.close()
