"""The audit store on a real PostgreSQL server: the same API as SQLite, a schema per store,
the chain checked by verify and the CLI, and a password that never shows."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.events import T0, make_event
from support.postgres import PgSchema
from support.waiting import wait_for

from audit_instrument import (
    AuditConfigError,
    AuditEvent,
    AuditValidationError,
    DeliveryError,
    audit,
    audit_actor,
    configure,
    emit,
)
from audit_instrument.cli import main
from audit_instrument.store import AuditStore, canonical_json, chain_hash
from audit_instrument.store.postgres import PostgresBackend

KEY = "postgres-test-key-0123456789abcdef"


def _ids(events: list[AuditEvent]) -> list[str]:
    return [event.idempotency_key for event in events]


def _newest_first(events: list[AuditEvent]) -> list[AuditEvent]:
    return sorted(events, key=lambda e: e.occurred_at, reverse=True)


def _fill(pg: PgSchema, n: int, **options: Any) -> list[AuditEvent]:
    events = [make_event(i) for i in range(n)]
    with AuditStore(pg.url, **options) as store:
        for event in events:
            store.send(event)
    return events


# -- writing and reading back ---------------------------------------------------


def test_events_read_back_losslessly_with_their_chain(pg: PgSchema) -> None:
    rich = AuditEvent(
        group="organization_1", action="tweet.update", action_type="U",
        actor_name="zoë@example.com", actor_id="user_1",
        target_name="zoë@example.com", target_id="tweet_5", location="2001:db8::1",
        occurred_at="2019-05-01T01:15:55.619355Z", user_agent="Mozilla/5.0 (X11)",
        targets=[{"id": "tweet_5", "name": "zoë@example.com"},
                 {"id": "user_9", "name": "user_9", "type": "user"}],
        metadata={"body_was": "What time is the event", "body": "What time is the event?",
                  "when": datetime(2020, 2, 29, 23, 59, 59, 1, tzinfo=UTC),
                  "n": 3, "ratio": 0.25, "flag": False, "map": {"k": "v", "i": 1}},
    )
    with AuditStore(pg.url) as store:
        assert store.send(rich) == 1
        assert store.send(make_event(1)) == 2
        [stored] = store.query(target="user_9").items
        head = store.head()
    assert stored.seq == 1 and stored.event == rich
    assert stored.event.to_record() == rich.to_record()
    [(record, digest)] = pg.execute("SELECT record, hash FROM {s}.events WHERE seq = 1")
    assert record == canonical_json(rich)
    assert digest == chain_hash("0" * 64, record) == stored.hash
    [(second,)] = pg.execute("SELECT hash FROM {s}.events WHERE seq = 2")
    assert (head.seq, head.hash) == (2, second)


def test_store_is_a_sender_for_instrumented_code(pg: PgSchema) -> None:
    store = AuditStore(pg.url)
    configure(store)

    @audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "tweet"))
    def update_tweet(tweet_id: int) -> None:
        pass

    with audit_actor(id="user_1", name="user@email.com", group="organization_1"):
        update_tweet(5)
    [stored] = store.query(actor="user_1").items
    assert stored.event.target_id == "tweet_5"
    configure()
    store.close()


def test_same_idempotency_key_is_stored_once_even_from_many_threads(pg: PgSchema) -> None:
    event = make_event(0)
    store = AuditStore(pg.url)
    start = threading.Barrier(12)
    results: list[int | None] = []

    def send() -> None:
        start.wait()
        results.append(store.send(event))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=lambda r: r or 0) == [None] * 11 + [1]
    assert store.send(event) is None
    assert store.count() == 1 and store.verify().ok
    store.close()


def test_threads_share_transactions_into_one_chain(pg: PgSchema) -> None:
    store = AuditStore(pg.url)
    seqs: list[int | None] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        for i in range(40):
            seq = store.send(make_event(t * 100 + i))
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s for s in seqs if s is not None) == list(range(1, 321))
    result = store.verify()
    assert result.ok and result.rows == 320, result
    store.close()


def test_reopening_continues_the_chain(pg: PgSchema) -> None:
    _fill(pg, 3)
    with AuditStore(pg.url) as store:
        assert store.send(make_event(3)) == 4
        assert store.verify().rows == 4


def test_a_value_postgresql_cannot_hold_fails_alone(pg: PgSchema) -> None:
    store = AuditStore(pg.url)
    with pytest.raises(DeliveryError, match="NUL"):
        store.send(make_event(0, actor_id="user\x00nul"))
    assert store.send(make_event(1)) == 1
    assert store.verify().ok
    store.close()


# -- queries -----------------------------------------------------------------------


@pytest.fixture
def filled(pg: PgSchema) -> tuple[AuditStore, list[AuditEvent]]:
    events = _fill(pg, 30)
    store = AuditStore(pg.url, readonly=True)
    yield store, events  # type: ignore[misc]
    store.close()


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"actor": "user_1"}, lambda e: e.actor_id == "user_1"),
        ({"action": "tweet.update"}, lambda e: e.action == "tweet.update"),
        ({"target": "tweet_2"}, lambda e: e.target_id == "tweet_2"),
        ({"group": "organization_2"}, lambda e: e.group == "organization_2"),
        (
            {"since": T0 + timedelta(minutes=10)},
            lambda e: e.occurred_at >= T0 + timedelta(minutes=10),
        ),
        ({"until": "2026-01-01T12:05:00Z"}, lambda e: e.occurred_at < T0 + timedelta(minutes=5)),
        (
            {"actor": "user_0", "group": "organization_1", "since": "2026-01-01T12:04:00",
             "until": datetime(2026, 1, 1, 12, 20), "target": "tweet_2"},
            lambda e: e.actor_id == "user_0" and e.group == "organization_1"
            and e.target_id == "tweet_2"
            and T0 + timedelta(minutes=4) <= e.occurred_at < T0 + timedelta(minutes=20),
        ),
    ],
)
def test_each_filter_selects_exactly_its_events(
    filled: tuple[AuditStore, list[AuditEvent]], filters: dict[str, Any], keep: Any
) -> None:
    store, events = filled
    expected = _newest_first([e for e in events if keep(e)])
    assert expected and len(expected) < len(events)
    page = store.query(limit=100, **filters)
    assert _ids(page.events) == _ids(expected)
    assert page.next_cursor is None
    assert store.count(**filters) == len(expected)


def test_cursor_pagination_visits_every_event_once(
    filled: tuple[AuditStore, list[AuditEvent]],
) -> None:
    store, events = filled
    seen: list[AuditEvent] = []
    sizes = []
    cursor = None
    while True:
        page = store.query(limit=7, cursor=cursor)
        sizes.append(len(page))
        seen.extend(page.events)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [7, 7, 7, 7, 2]
    assert _ids(seen) == _ids(_newest_first(events))
    walked = [s.event for s in store.iter_events(page_size=3, target="tweet_1")]
    assert _ids(walked) == _ids(_newest_first([e for e in events if e.target_id == "tweet_1"]))


def test_cursor_handles_events_with_the_same_time(pg: PgSchema) -> None:
    with AuditStore(pg.url) as store:
        for i in range(5):
            store.send(make_event(i, occurred_at=T0))
        first = store.query(limit=2)
        second = store.query(limit=2, cursor=first.next_cursor)
        third = store.query(limit=2, cursor=second.next_cursor)
    assert [s.seq for s in (*first, *second, *third)] == [5, 4, 3, 2, 1]
    assert third.next_cursor is None


def test_bad_query_values_raise_naming_the_filter(
    filled: tuple[AuditStore, list[AuditEvent]],
) -> None:
    store, _ = filled
    for filters, field in (({"limit": 0}, "limit"), ({"since": "yesterday"}, "since"),
                           ({"cursor": "nope"}, "cursor"), ({"actor": ""}, "actor")):
        with pytest.raises(AuditValidationError) as info:
            store.query(**filters)
        assert info.value.field == field


# -- the schema ----------------------------------------------------------------------


def test_store_lives_in_the_chosen_schema_with_a_version(pg: PgSchema) -> None:
    AuditStore(pg.dsn, schema=pg.schema).close()
    tables = {name for (name,) in pg.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (pg.schema,))}
    assert tables == {"store_meta", "events", "event_targets", "chain", "chain_seal", "pending"}
    assert pg.execute("SELECT application, version FROM {s}.store_meta") == [
        ("audit_instrument", 1)]
    with pytest.raises(AuditConfigError, match="disagree"):
        AuditStore(pg.url, schema="other")


def test_default_schema_is_audit(pg: PgSchema) -> None:
    pg.schema = "audit"  # the fixture drops it afterwards
    with AuditStore(pg.dsn) as store:
        store.send(make_event(0))
    assert pg.execute("SELECT count(*) FROM audit.events") == [(1,)]


@pytest.mark.parametrize("schema", ["Audit", "1audit", "a-b", "pg_audit", "x" * 64, ""])
def test_bad_schema_names_are_config_errors(pg: PgSchema, schema: str) -> None:
    with pytest.raises(AuditConfigError, match="schema"):
        AuditStore(pg.dsn, schema=schema)


def test_schema_of_another_application_is_refused(pg: PgSchema) -> None:
    pg.execute("CREATE SCHEMA {s}")
    pg.execute("CREATE TABLE {s}.invoices (id int)")
    with pytest.raises(AuditConfigError, match="holds other tables"):
        AuditStore(pg.url)
    assert pg.execute("SELECT count(*) FROM {s}.invoices") == [(0,)]


def test_newer_schema_version_is_refused(pg: PgSchema) -> None:
    AuditStore(pg.url).close()
    pg.execute("UPDATE {s}.store_meta SET version = 99")
    with pytest.raises(AuditConfigError, match="newer audit_instrument"):
        AuditStore(pg.url, readonly=True)


def test_processes_creating_one_store_at_once_agree(pg: PgSchema) -> None:
    stores: list[AuditStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(AuditStore(pg.url))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i, store in enumerate(stores):
        store.send(make_event(i))
    assert stores[0].verify().rows == 6
    for store in stores:
        store.close()


def test_readonly_store_needs_an_existing_store_and_never_writes(pg: PgSchema) -> None:
    with pytest.raises(AuditConfigError, match="no audit store"):
        AuditStore(pg.url, readonly=True)
    assert pg.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg.schema,)) == []
    _fill(pg, 2)
    with AuditStore(pg.url, readonly=True) as store:
        with pytest.raises(AuditConfigError, match="read-only"):
            store.send(make_event(9))
        with pytest.raises(AuditConfigError, match="PostgreSQL store"):
            store.in_transaction(object())
        assert store.count() == 2


def test_a_path_is_still_a_sqlite_store(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "audit.db") as store:
        assert store.url is None and store.path == tmp_path / "audit.db"
    with pytest.raises(AuditConfigError, match="schema="):
        AuditStore(tmp_path / "other.db", schema="audit")


# -- the password never shows -----------------------------------------------------------


def test_password_is_never_shown(pg: PgSchema, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr%40t-pw"  # percent-encoded "@" in the URL
    url = pg.url.replace("postgres@", f"postgres:{secret}@")  # trust auth ignores it
    caplog.set_level(logging.DEBUG)
    store = AuditStore(url)
    shown = [repr(store), str(store.url)]
    pg.execute("ALTER TABLE {s}.events ADD CONSTRAINT refuse CHECK (action <> 'user.login')")
    with pytest.raises(DeliveryError) as failed:
        store.send(make_event(0, action="user.login"))
    shown.append(str(failed.value))
    store.close()
    closed_port = url.replace(f":{pg.cluster.port}/", ":1/")
    with pytest.raises(AuditConfigError) as refused:
        AuditStore(closed_port)
    shown.append(str(refused.value))
    shown.extend(record.getMessage() for record in caplog.records)
    for text in shown:
        assert secret not in text and "s3cr@t" not in text, text
    assert "postgresql://postgres@127.0.0.1" in repr(store)


# -- verify and tampering ------------------------------------------------------------------


def test_intact_store_verifies(pg: PgSchema) -> None:
    _fill(pg, 12)
    with AuditStore(pg.url, readonly=True) as store:
        result = store.verify()
    assert result.ok and result.rows == 12 and result.pending == 0


@pytest.mark.parametrize(
    ("tamper", "bad_row", "reason"),
    [
        ("UPDATE {s}.events SET record = replace(record, 'user_1', 'user_7') WHERE seq = 6",
         6, "hash mismatch"),
        ("UPDATE {s}.events SET actor_id = 'user_7' WHERE seq = 6", 6, "column actor_id"),
        ("DELETE FROM {s}.events WHERE seq = 4", 4, "missing"),
        ("DELETE FROM {s}.events WHERE seq > 8", 9, "cut off the end"),
        ("UPDATE {s}.chain SET hash = repeat('0', 64)", 0, "chain head"),
        ("DELETE FROM {s}.event_targets WHERE seq = 3", 3, "target index"),
    ],
)
def test_tampering_is_detected(pg: PgSchema, tamper: str, bad_row: int, reason: str) -> None:
    _fill(pg, 10)
    pg.execute(tamper)
    with AuditStore(pg.url, readonly=True) as store:
        result = store.verify()
    assert not result.ok and result.bad_row == bad_row
    assert reason in str(result)


def test_dropped_index_is_reported(pg: PgSchema) -> None:
    _fill(pg, 3)
    pg.execute("DROP INDEX {s}.events_actor")
    with AuditStore(pg.url, readonly=True) as store:
        result = store.verify()
    assert not result.ok and "index events_actor is missing" in result.reason
    pg.execute("CREATE INDEX my_index ON {s}.events (action)")  # an index of one's own is fine
    pg.execute("CREATE INDEX events_actor ON {s}.events (actor_id, occurred_at, seq)")
    with AuditStore(pg.url, readonly=True) as store:
        assert store.verify().ok


def test_keyed_chain_and_signed_checkpoints(pg: PgSchema) -> None:
    _fill(pg, 3)  # unkeyed at first, keyed from row 4 on
    with AuditStore(pg.url, key=KEY) as store:
        assert store.keyed
        store.send(make_event(3))
        line = store.checkpoint()
        store.send(make_event(4))
        assert store.verify(against=line).ok
    with AuditStore(pg.url, readonly=True) as store, pytest.raises(AuditConfigError):
        store.verify()
    with AuditStore(pg.url, readonly=True, key="another-key-0123456789abcdef") as store:
        assert not store.verify().ok
    with pytest.raises(AuditConfigError, match="keyed"):
        AuditStore(pg.url)  # writing needs the key
    # an intruder without the key cuts the last row and moves the head back
    pg.execute("DELETE FROM {s}.events WHERE seq = 5")
    pg.execute("DELETE FROM {s}.event_targets WHERE seq = 5")
    pg.execute("UPDATE {s}.chain SET seq = 4, hash = (SELECT hash FROM {s}.events WHERE seq = 4)")
    with AuditStore(pg.url, readonly=True, key=KEY) as store:
        result = store.verify()
    assert not result.ok and result.bad_row == 0 and "MAC" in result.reason


# -- the command line ----------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_takes_a_url_where_a_file_goes(
    pg: PgSchema, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(pg, 6)
    url = pg.url.replace("postgres@", "postgres:hunter2@")
    code, out, err = _cli(capsys, "events", url, "--actor", "user_1", "--json")
    assert code == 0 and len(out.splitlines()) == 2, err
    code, out, _ = _cli(capsys, "checkpoint", url)
    line = out.strip()
    assert code == 0 and line.startswith("aic1.6.")
    code, out, _ = _cli(capsys, "verify", url, "--against", line)
    assert code == 0 and "intact, 6 rows, matches the checkpoint" in out
    assert "hunter2" not in out and "postgresql://postgres@127.0.0.1" in out
    monkeypatch.setenv("AUDIT_DB", url)  # the default store
    code, out, _ = _cli(capsys, "verify")
    assert code == 0 and "intact, 6 rows" in out
    pg.execute("UPDATE {s}.events SET record = replace(record, 'user_1', 'user_7') WHERE seq = 2")
    code, out, err = _cli(capsys, "verify")
    assert code == 1 and "NOT intact: row 2: hash mismatch" in err
    assert "hunter2" not in out + err


def test_cli_reports_an_unreachable_server_in_one_line(
    pg: PgSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:1/{pg.schema}"
    code, _, err = _cli(capsys, "verify", url)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "cannot connect" in err and "hunter2" not in err


def test_deleted_chain_head_is_reported_and_stops_writes(pg: PgSchema) -> None:
    _fill(pg, 3)
    pg.execute("DELETE FROM {s}.chain")
    with AuditStore(pg.url) as store:
        result = store.verify()
        assert not result.ok and result.bad_row == 0 and "missing" in result.reason
        with pytest.raises(DeliveryError, match="chain head is missing"):
            store.send(make_event(3))
    assert pg.execute("SELECT count(*) FROM {s}.events") == [(3,)]


def test_writes_with_the_flush_under_the_head_lock(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the role may not call pg_logical_emit_message, commits flush under the head."""
    monkeypatch.setattr(PostgresBackend, "flush_apart", False)
    store = AuditStore(pg.url)
    seqs = []
    threads = [threading.Thread(target=lambda t=t: seqs.extend(
        store.send(make_event(t * 10 + i)) for i in range(10))) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seqs) == list(range(1, 41)) and store.verify().ok  # type: ignore[type-var]
    store.close()


def test_an_application_role_without_superuser_rights(pg: PgSchema) -> None:
    """The store's role needs CREATE on the database (or an existing schema it owns); a
    role that only writes inside its transactions needs USAGE on the schema, INSERT on
    pending's record and SELECT on its id and xid (what the INSERT returns)."""
    role, writer = f"{pg.schema}_app", f"{pg.schema}_web"
    pg.execute(f"CREATE ROLE {role} LOGIN")
    pg.execute(f"CREATE ROLE {writer} LOGIN")
    try:
        pg.execute(f"GRANT CREATE ON DATABASE audit_tests TO {role}")
        url = pg.url.replace("postgres@", f"{role}@")
        store = AuditStore(url)
        configure(store)
        store.send(make_event(0))
        pg.execute(f"GRANT USAGE ON SCHEMA {{s}} TO {writer}")
        pg.execute(f"GRANT INSERT (record), SELECT (id, xid) ON {{s}}.pending TO {writer}")
        with psycopg.connect(pg.dsn.replace("postgres@", f"{writer}@")) as conn:
            with store.in_transaction(conn):
                emit(make_event(1))
            conn.commit()
        wait_for(lambda: store.count() == 2)
        assert store.verify().ok
        configure()
        store.close()
    finally:
        pg.execute(f'DROP SCHEMA IF EXISTS "{pg.schema}" CASCADE')
        pg.execute(f"REVOKE ALL ON DATABASE audit_tests FROM {role}")
        pg.execute(f"DROP ROLE {role}")
        pg.execute(f"DROP ROLE {writer}")
