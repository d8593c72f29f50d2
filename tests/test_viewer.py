"""The viewer over WSGI: pages, filters, paging, the API, escaping, headers, recorded reads,
and tenant isolation on every route (the browser tests are in test_viewer_browser.py)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.events import make_event
from support.store import write_schema_1
from support.viewer import (
    HOSTILE,
    HOSTILE_ACTION,
    MARKER,
    ORG1,
    ORG2,
    groups_of,
    tenant_store,
)

from audit_instrument import audit_actor
from audit_instrument.store import AuditStore
from audit_instrument.viewer import ALL_GROUPS, CSP, Viewer, WSGIViewer, wsgi_app

N = 40  # events of each organisation
ROUTES = ("/", "/event?id=organization_1-0", "/chart.svg", "/api/events", "/export.csv",
          "/export.jsonl", "/chain")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with tenant_store(tmp_path / "audit.db", N) as made:
        yield made


@pytest.fixture
def app(store: AuditStore) -> Iterator[WSGIViewer]:
    """Users come in an X-User header; reads are recorded in the store."""

    def authorize(environ: dict[str, Any]) -> object:
        user = environ.get("HTTP_X_USER")
        return {ORG1, ORG2} if user == "both" else groups_of(user)

    made = wsgi_app(store, authorize=authorize, record=store.send,
                    actor=lambda environ: (environ.get("HTTP_X_USER") or "nobody", "reader"))
    yield made
    made.viewer.chain.wait(30)


Client = Callable[[str | None], httpx.Client]


@pytest.fixture
def client(app: WSGIViewer) -> Iterator[Client]:
    made: list[httpx.Client] = []

    def make(user: str | None, wsgi: Any = None) -> httpx.Client:
        headers = {"X-User": user} if user else {}
        client = httpx.Client(transport=httpx.WSGITransport(app=wsgi or app),
                              base_url="http://testserver", headers=headers)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


def _api_all(client: httpx.Client, limit: int, **params: str) -> list[dict[str, Any]]:
    """Every record the API gives, following next_cursor."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        answer = client.get("/api/events", params={**params, "limit": str(limit),
                                                   **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"events", "next_cursor"}
        found.extend(body["events"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def _views(store: AuditStore, action: str = "audit_log.view") -> list[Any]:
    return [item.event for item in store.iter_events(action=action)]


# -- pages -------------------------------------------------------------------------------


def test_list_shows_newest_first_with_before_and_after(client: Client) -> None:
    page = client("admin").get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    text = page.text
    assert text.index("draft 78") < text.index("draft 76") < text.index("draft 32<")
    assert "draft 30<" not in text  # 50 a page: events 79 down to 32, and the two newest
    assert 'class="before">draft 78</td>' in text and 'class="after">final 78</td>' in text
    assert "chain" in text and 'href="/export.csv"' in text and "<svg" in text


def test_filters_each_narrow_the_events(client: Client) -> None:
    admin = client("admin")
    by_actor = _api_all(admin, 100, actor="alice_1")
    assert by_actor and {r["actor_id"] for r in by_actor} == {"alice_1"}
    assert {r["group"] for r in _api_all(admin, 100, group=ORG2)} == {ORG2}
    assert [r["target_id"] for r in _api_all(admin, 100, target="doc_4")] == ["doc_4"]
    assert {r["action"] for r in _api_all(admin, 100, action="document.update")} == {
        "document.update"}
    # events i=0..79 are T0 + i minutes; until is exclusive
    timed = _api_all(admin, 100, since="2026-01-01T12:10:00Z", until="2026-01-01T12:20")
    assert sorted(r["target_id"][-2:] for r in timed) == [f"{i:02d}"[-2:] for i in range(10, 20)]
    page = admin.get("/", params={"actor": "bob_2"})
    assert "bob2@example.com" in page.text and "alice" not in page.text.split("<tbody>")[1]


@pytest.mark.parametrize("user", ["admin", "alice", "both"])
def test_paging_returns_every_event_once_newest_first(client: Client, user: str) -> None:
    records = _api_all(client(user), 7)
    keys = [r["idempotency_key"] for r in records]
    assert len(keys) == len(set(keys))
    expected = {"admin": 2 * N + 2, "alice": N + 2, "both": 2 * N + 2}[user]
    assert len(keys) == expected
    stamps = [r["occurred_at"] for r in records]
    assert stamps == sorted(stamps, reverse=True)


def test_html_paging_links_carry_filters_and_cursor(client: Client) -> None:
    admin = client("admin")
    first = admin.get("/", params={"action": "document.update", "limit": "10"})
    assert 'rel="next"' in first.text
    link = first.text.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    assert "action=document.update" in link and "cursor=" in link and "limit=10" in link
    second = admin.get(link)
    assert second.status_code == 200 and "Newest" in second.text
    assert "draft 58" in second.text and "draft 78" not in second.text


def test_event_page_shows_the_full_record(client: Client, store: AuditStore) -> None:
    page = client("admin").get("/event", params={"id": "organization_1-10"})
    assert page.status_code == 200
    text = page.text
    for part in ("document.update", "alice1@example.com", "doc_10", "Document 10", "draft 10",
                 "final 10", "203.0.113.5", "organization_1-10", store.get("organization_1-10")
                 .hash):  # type: ignore[union-attr]
        assert part in text, part
    assert '"idempotency_key": "organization_1-10"' in text.replace("&quot;", '"')


# -- tenant isolation ---------------------------------------------------------------------------


def test_a_tenant_never_sees_another_groups_events_anywhere(client: Client,
                                                            store: AuditStore) -> None:
    recorded: list[Any] = []  # reads recorded aside: alice's own reads name what she asked
    app = wsgi_app(store, authorize=lambda e: groups_of(e.get("HTTP_X_USER")),
                   actor=lambda e: (e.get("HTTP_X_USER"), "reader"), record=recorded.append)
    alice = client("alice", app)
    probes = [
        "/", f"/?group={ORG2}", "/?actor=bob_1", "/?target=ORG2SECRET_doc_1",
        f"/event?id={ORG2}-1", "/chart.svg", f"/chart.svg?group={ORG2}",
        f"/chart.svg?action=secret.{MARKER.lower()}", "/export.csv", f"/export.csv?group={ORG2}",
        "/export.jsonl", "/export.jsonl?actor=bob_0", "/api/events", f"/api/events?group={ORG2}",
        "/api/events?limit=1000", "/chain",
    ]
    for probe in probes:
        shown = alice.get(probe).text.split("<tbody>")[-1]  # not the filters echoed back
        assert MARKER not in shown and MARKER.lower() not in shown, probe
        assert not any(f"bob{i}@" in shown for i in range(3)), probe
    missing = alice.get("/event", params={"id": "no-such-event"})
    foreign = alice.get("/event", params={"id": f"{ORG2}-1"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.text == missing.text  # nothing tells "not yours" from "not there"
    rows = list(csv.reader(io.StringIO(alice.get("/export.csv").text)))
    assert len(rows) == 1 + N + 2 and {row[1] for row in rows[1:]} == {ORG1}
    lines = alice.get("/export.jsonl").text.splitlines()
    assert len(lines) == N + 2 and {json.loads(line)["group"] for line in lines} == {ORG1}
    assert _api_all(alice, 5, group=ORG2) == []
    bob = client("bob", app)
    assert {r["group"] for r in _api_all(bob, 50)} == {ORG2}
    assert {(event.actor_id, event.group) for event in recorded} == {("alice", ORG1),
                                                                      ("bob", ORG2)}
    app.viewer.chain.wait(30)


def _charted(svg: str) -> int:
    """The events the chart's bars count (each bar's title: "<when>: <n> events (...)")."""
    return sum(int(n.replace(",", "")) for n in re.findall(r": ([\d,]+) events \(", svg))


def test_the_chart_counts_only_the_callers_groups(client: Client) -> None:
    day = {"since": "2026-01-01", "until": "2026-01-02"}
    alice_chart = client("alice").get("/chart.svg", params=day).text
    admin_chart = client("admin").get("/chart.svg", params=day).text
    assert _charted(alice_chart) == N  # the hostile events are on the next day
    assert _charted(admin_chart) == 2 * N and MARKER.lower() in admin_chart
    by_day = client("alice").get("/chart.svg", params={"since": "2025-12-01",
                                                       "until": "2026-01-02"}).text
    assert "Events per day" in by_day and _charted(by_day) == N


def test_store_wide_figures_only_for_readers_of_every_group(client: Client, app: WSGIViewer
                                                            ) -> None:
    app.viewer.chain.view()
    app.viewer.chain.wait(30)
    admin, alice = client("admin").get("/chain").text, client("alice").get("/chain").text
    assert "chain intact, " in admin and " rows" in admin and "Verify now" in admin
    assert "chain intact" in alice and " rows" not in alice and "Verify now" not in alice
    assert '<td class="seq">' in client("admin").get("/").text
    assert '<td class="seq">' not in client("alice").get("/").text


@pytest.mark.parametrize("route", ROUTES)
def test_no_groups_is_403_and_records_nothing(client: Client, store: AuditStore,
                                              route: str) -> None:
    before = store.count()
    for user in (None, "mallory"):
        answer = client(user).get(route)
        assert answer.status_code == 403, (user, route)
        assert "document" not in answer.text
    assert store.count() == before


@pytest.mark.parametrize(
    ("answer", "status"),
    [("organization_1", 500), (None, 500), (True, 500), ({ORG1, 3}, 500),
     (RuntimeError("boom"), 500), (PermissionError("no"), 403)],
)
def test_a_bad_authorize_fails_closed(client: Client, store: AuditStore, answer: object,
                                      status: int) -> None:
    def authorize(environ: dict[str, Any]) -> object:
        if isinstance(answer, BaseException):
            raise answer
        return answer

    app = wsgi_app(store, authorize=authorize, actor=lambda e: ("x", "x"), record=store.send)
    for route in ROUTES:
        got = client("alice", app).get(route)
        assert got.status_code == status, route
        assert "alice" not in got.text and "draft" not in got.text


def test_authorize_is_mandatory(store: AuditStore) -> None:
    from audit_instrument import AuditConfigError

    with pytest.raises(TypeError):
        Viewer(store)  # type: ignore[call-arg]
    with pytest.raises(AuditConfigError, match="authorize is required"):
        Viewer(store, authorize=None)  # type: ignore[arg-type]


# -- reads are audited ---------------------------------------------------------------------


def test_every_read_is_recorded_with_the_readers_actor(client: Client, store: AuditStore) -> None:
    alice = client("alice")
    alice.get("/", params={"actor": "alice_1"})
    alice.get("/event", params={"id": "organization_1-4"})
    alice.get("/api/events", params={"limit": "3"})
    alice.get("/chart.svg")
    alice.get("/export.csv", params={"action": "document.update"})
    views = _views(store)
    assert [v.metadata["page"] for v in reversed(views)] == ["list", "event", "api", "chart"]
    assert {(v.actor_id, v.group, v.action_type.value) for v in views} == {("alice", ORG1, "R")}
    assert views[-1].metadata["filters"] == "actor=alice_1"
    by_alice_1 = len([i for i in range(N) if 2 * i % 3 == 1])
    assert views[-1].metadata["events"] == by_alice_1 and views[-3].metadata["events"] == 3
    assert views[-2].metadata == {"page": "event", "event": "organization_1-4"}
    (export,) = _views(store, "audit_log.export")
    assert export.actor_id == "alice" and export.metadata == {
        "format": "csv", "filters": "action=document.update"}
    assert export.target_id == "audit_log"


def test_a_read_that_cannot_be_recorded_is_refused(client: Client, store: AuditStore) -> None:
    def broken(event: object) -> None:
        raise OSError("disk full")

    app = wsgi_app(store, authorize=lambda e: ALL_GROUPS, actor=lambda e: ("x", "x"),
                   record=broken)
    for route in ROUTES[:-1]:
        answer = client("admin", app).get(route)
        assert answer.status_code == 503, route
        assert "draft" not in answer.text and "alice" not in answer.text


def test_a_reader_nobody_can_name_is_refused(client: Client, store: AuditStore) -> None:
    app = wsgi_app(store, authorize=lambda e: ALL_GROUPS, record=store.send)
    answer = client("admin", app).get("/")
    assert answer.status_code == 403 and "who is reading" in answer.text
    with audit_actor(id="ops_1", name="ops@example.com", group="vendor"):  # a scope's actor
        assert client("admin", app).get("/").status_code == 200
    (view,) = _views(store)
    assert (view.actor_id, view.group) == ("ops_1", "vendor")


def test_no_get_changes_anything_but_the_read(client: Client, store: AuditStore) -> None:
    rows_before = [(i.seq, i.hash) for i in store.iter_events()]
    admin = client("admin")
    for route in ROUTES:
        assert admin.get(route).status_code == 200
    assert admin.get("/verify").status_code == 405
    after = list(store.iter_events())
    added = [i for i in after if (i.seq, i.hash) not in set(rows_before)]
    assert {i.event.action for i in added} == {"audit_log.view", "audit_log.export"}
    assert len(after) == len(rows_before) + len(added)
    assert store.verify().ok


def test_verify_now_is_a_same_origin_post_by_a_reader_of_every_group(client: Client) -> None:
    admin = client("admin")
    started = admin.post("/verify", headers={"Origin": "http://testserver",
                                             "Sec-Fetch-Site": "same-origin"})
    assert started.status_code == 303 and started.headers["location"] == "/chain"
    assert admin.post("/verify", headers={"Origin": "http://evil.example"}).status_code == 403
    assert admin.post("/verify", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client("alice").post("/verify").status_code == 403
    assert admin.post("/", headers={"Origin": "http://testserver"}).status_code == 405


# -- safe by construction --------------------------------------------------------------------


def test_hostile_values_render_as_inert_text(client: Client) -> None:
    admin = client("admin")
    pages = [admin.get("/").text, admin.get("/event", params={"id": "hostile-0"}).text,
             admin.get("/event", params={"id": "hostile-action"}).text,
             admin.get("/chart.svg", params={"since": "2026-01-01"}).text,
             admin.get("/", params={"actor": HOSTILE["actor_id"]}).text]
    for text in pages:
        lowered = text.lower()
        assert "<script" not in lowered and "<img" not in lowered and "<b " not in lowered
        assert "<svg onload" not in lowered and "onerror=alert" not in text.replace(
            "onerror=alert(1)&gt;", "")
    list_page, event_page = pages[0], pages[1]
    assert "&lt;script&gt;alert(&quot;actor&quot;)&lt;/script&gt;" in list_page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in event_page
    assert "&#x27;; alert(&#x27;target&#x27;); &#x27;" in event_page
    assert "&lt;b onmouseover=alert(3)&gt;bold&lt;/b&gt;" in event_page
    assert "&lt;script&gt;alert(6)&lt;/script&gt;.x" in pages[2] and \
        "&lt;script&gt;alert(6)&lt;/script&gt;.x" in pages[3]
    # the filter form echoes a hostile value back inside a quoted attribute, escaped
    assert 'value="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in pages[4]
    api = admin.get("/api/events", params={"actor": HOSTILE["actor_id"]})
    assert api.headers["content-type"].startswith("application/json")
    assert api.json()["events"][0]["actor_name"] == HOSTILE["actor_name"]
    assert {r["action"] for r in _api_all(admin, 100, actor="alice_0")} >= {HOSTILE_ACTION}


def test_csv_cells_that_could_be_formulas_are_neutralised(client: Client) -> None:
    text = client("admin").get("/export.csv", params={"target": HOSTILE["target_id"]}).text
    header, row = list(csv.reader(io.StringIO(text)))
    cells = dict(zip(header, row, strict=True))
    assert cells["location"] == "'" + HOSTILE["location"]
    assert cells["user_agent"] == "'" + HOSTILE["user_agent"]
    assert cells["actor_name"] == HOSTILE["actor_name"]  # markup is not a formula: kept as is
    assert json.loads(cells["metadata"]) == HOSTILE["metadata"]
    assert {t["id"] for t in json.loads(cells["targets"])} == {HOSTILE["target_id"], "second<i>"}
    for cell in row:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell


@pytest.mark.parametrize("route", [*ROUTES, "/viewer.css", "/nope", "/verify"])
def test_every_answer_carries_the_security_headers(client: Client, route: str) -> None:
    answer = client("admin").get(route)
    assert answer.headers["content-security-policy"] == CSP
    assert "script-src" not in CSP and "'unsafe-inline'" not in CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cache-control"] == "no-store"


def test_bad_filter_values_name_the_filter(client: Client) -> None:
    admin = client("admin")
    page = admin.get("/", params={"since": "next tuesday"})
    assert page.status_code == 400 and "since" in page.text and 'role="alert"' in page.text
    api = admin.get("/api/events", params={"limit": "0"})
    assert api.status_code == 400 and api.json()["error"]["field"] == "limit"
    assert admin.get("/api/events", params={"cursor": "garbage"}).json()["error"][
        "field"] == "cursor"
    assert admin.get("/export.csv", params={"until": "x"}).status_code == 400
    assert admin.get("/", params={"since": "99999999d"}).status_code == 400
    assert admin.get("/", params={"since": "0001-01-01", "until": "0001-01-02"}
                     ).status_code == 200


def test_a_read_only_old_store_is_viewed_with_a_note_instead_of_a_chart(
    tmp_path: Path, client: Client
) -> None:
    path = tmp_path / "old.db"
    write_schema_1(path, [make_event(i) for i in range(5)])
    with AuditStore(path, readonly=True) as old:
        app = wsgi_app(old, authorize=lambda e: ALL_GROUPS, actor=lambda e: ("x", "x"),
                       record=lambda event: None)
        page = client("admin", app).get("/")
        app.viewer.chain.wait(30)
    assert page.status_code == 200 and "keeps no activity counts" in page.text
    assert "tweet_4" in page.text
