"""WorkOS audit-log exports: the official SDK and ours against the same stand-in, and downloads.

The official ``workos`` package (a test dependency) sends its requests to
the WorkOS stand-in; ours must send the same method, path, headers that
matter and JSON body. The download host (a second port of the stand-in)
records every request: the API key must never reach it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.events import make_event
from support.workos import API_KEY
from support.workos_server import WorkOSServer
from workos import WorkOSClient

from audit_instrument import AuditValidationError, WorkOS
from audit_instrument.senders.workos_exports import AuditLogExport, ExportError

MakeWorkOS = Callable[..., WorkOS]
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2026, 2, 1, 12, 30, 15, 123456, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def _sdk(server: WorkOSServer) -> WorkOSClient:
    return WorkOSClient(api_key=API_KEY, client_id="client_test", base_url=server.url,
                        max_retries=0)


def _shape(request: Any) -> tuple[str, str, str | None, str | None, Any]:
    """What must agree between the SDK's request and ours."""
    headers = request.headers
    body = request.json() if request.body else None
    return (request.method, request.path, headers.get("authorization"),
            headers.get("content-type") if body is not None else None, body)


@pytest.mark.parametrize("arguments", [
    {"range_start": START, "range_end": END},
    {"range_start": START, "range_end": END, "actions": ["user.login", "user.logout"],
     "actor_names": ["Ann Example"], "actor_ids": ["user_1", "user_2"], "targets": ["team"]},
    {"range_start": "2026-01-01T00:00:00Z", "range_end": "2026-01-31T23:59:59.999Z",
     "actions": []},
], ids=["datetimes", "every-filter", "strings"])
def test_create_and_get_export_send_what_the_official_sdk_sends(
        server: WorkOSServer, make_workos: MakeWorkOS, arguments: dict[str, Any]) -> None:
    theirs = _sdk(server).audit_logs.create_export(organization_id="org_1", **arguments)
    _sdk(server).audit_logs.get_export(theirs.id)
    ours = make_workos().create_export("org_1", **arguments)
    again = make_workos().get_export(ours.id)
    sdk_create, sdk_get, our_create, our_get = server.requests
    assert _shape(our_create) == _shape(sdk_create)
    assert _shape(our_get)[0] == _shape(sdk_get)[0] == "GET"
    assert our_get.path == f"/audit_logs/exports/{ours.id}"
    assert sdk_get.path == f"/audit_logs/exports/{theirs.id}"
    assert _shape(our_get)[2:] == _shape(sdk_get)[2:]
    # both send an idempotency key with the POST: a retried create makes one export
    assert our_create.idempotency_key and sdk_create.idempotency_key
    assert ours.state == again.state == theirs.state.value == "pending"  # read once: pending


def test_what_get_export_reads_matches_the_official_sdk(
        server: WorkOSServer, make_workos: MakeWorkOS) -> None:
    server.export_polls_pending = 0
    created = make_workos().create_export("org_1", START, END)
    ours = make_workos().get_export(created.id)
    theirs = _sdk(server).audit_logs.get_export(created.id)
    assert (ours.id, ours.state, ours.url, ours.created_at, ours.updated_at, ours.object) == (
        theirs.id, theirs.state.value, theirs.url, theirs.created_at, theirs.updated_at,
        theirs.object)
    assert ours.ready and ours.url is not None
    assert "Signature" not in repr(ours) and ours.id in repr(ours)  # the URL's secret part


def test_download_waits_until_ready_and_never_sends_the_key_to_the_download_host(
        server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path) -> None:
    workos = make_workos(api="audit_logs")
    events = [make_event(i, group="org_1") for i in range(3)]
    for handle in workos.create_events(events):
        handle.result(10)
    server.export_polls_pending = 3
    export = workos.create_export("org_1", START, END)
    path = workos.download_export(export.id, tmp_path / "january.csv", poll_interval=0.01)
    assert path == tmp_path / "january.csv"
    rows = path.read_text().splitlines()
    assert rows[0] == "occurred_at,action,actor_id,actor_name,targets"
    assert len(rows) == 4 and all("tweet." in row for row in rows[1:])
    reads = [r for r in server.requests if r.method == "GET"]
    assert len(reads) == 4  # pending three times, then ready
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in reads)
    [download] = server.downloads
    assert "authorization" not in download.headers
    assert API_KEY not in str(download.headers) and API_KEY not in download.path
    assert [p.name for p in tmp_path.iterdir()] == ["january.csv"]


def test_a_refused_download_url_is_renewed_once(
        server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path) -> None:
    server.export_polls_pending = 0
    server.export_csv = b"a,b\n1,2\n"
    server.download_script.append(403)  # the URL expired
    export = make_workos().create_export("org_1", START, END)
    path = make_workos().download_export(export.id, tmp_path / "out.csv")
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert len(server.downloads) == 2
    assert all("authorization" not in d.headers for d in server.downloads)


@pytest.mark.parametrize("failure", ["error-state", "download-500", "twice-403"])
def test_a_failed_export_or_download_leaves_no_file(
        server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path, failure: str) -> None:
    server.export_polls_pending = 0
    if failure == "error-state":
        server.export_outcome = "error"
    elif failure == "download-500":
        server.download_script.append(500)
    else:
        server.download_script.extend([403, 403])
    export = make_workos().create_export("org_1", START, END)
    with pytest.raises(ExportError) as caught:
        make_workos().download_export(export.id, tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []
    assert API_KEY not in str(caught.value) and "Signature" not in str(caught.value)


def test_waiting_for_a_pending_export_is_bounded(
        server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path) -> None:
    server.export_polls_pending = 10_000
    export = make_workos().create_export("org_1", START, END)
    with pytest.raises(ExportError, match="still pending"):
        make_workos().download_export(export.id, tmp_path / "out.csv", timeout=0.2,
                                      poll_interval=0.05)
    assert list(tmp_path.iterdir()) == []


def test_a_progress_line_is_drawn_and_erased_when_asked(
        server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    server.export_polls_pending = 0
    server.export_csv = b"x" * 300_000
    export = make_workos().create_export("org_1", START, END)
    make_workos().download_export(export.id, tmp_path / "big.csv", progress=True)
    err = capsys.readouterr().err
    assert f"{export.id} (bytes): " in err and "/300,000" in err
    assert err.endswith("\r\x1b[K")  # erased at the end
    make_workos().download_export(export.id, tmp_path / "quiet.csv")  # not a terminal
    assert capsys.readouterr().err == ""


def test_server_errors_are_retried_and_refusals_raise_with_the_servers_message(
        server: WorkOSServer, make_workos: MakeWorkOS) -> None:
    server.script(503, 503)
    export = make_workos().create_export("org_1", START, END)
    creates = [r for r in server.requests if r.method == "POST"]
    assert len(creates) == 3 and len({r.idempotency_key for r in creates}) == 1
    assert export.id == "audit_log_export_0001" and len(server.exports) == 1
    with pytest.raises(ExportError, match="HTTP 401: Unauthorized") as caught:
        make_workos(api_key="sk_wrong").get_export(export.id)
    assert caught.value.status == 401 and "sk_wrong" not in str(caught.value)


@pytest.mark.parametrize(("arguments", "field"), [
    ({"organization_id": ""}, "organization_id"),
    ({"range_start": "last tuesday"}, "range_start"),
    ({"range_end": START - timedelta(days=1)}, "range_end"),
    ({"actions": "user.login"}, "actions"),
    ({"actor_ids": ["user_1", 7]}, "actor_ids[1]"),
])
def test_bad_arguments_are_validation_errors_and_send_nothing(
        server: WorkOSServer, make_workos: MakeWorkOS, arguments: dict[str, Any],
        field: str) -> None:
    call: dict[str, Any] = {"organization_id": "org_1", "range_start": START, "range_end": END}
    call.update(arguments)
    with pytest.raises(AuditValidationError) as caught:
        make_workos().create_export(**call)
    assert caught.value.field == field
    assert server.requests == []


def test_export_ids_cannot_reach_other_paths(make_workos: MakeWorkOS,
                                             server: WorkOSServer) -> None:
    with pytest.raises(AuditValidationError):
        make_workos().get_export("../events")
    assert server.requests == []


def test_the_export_record_reads_wire_json() -> None:
    export = AuditLogExport.from_dict({
        "object": "audit_log_export", "id": "audit_log_export_1", "state": "ready",
        "url": "https://files.example/e.csv?X-Amz-Signature=abc",
        "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:01:00.000Z"})
    assert export.ready and export.created_at == START
    assert repr(export) == ("AuditLogExport(id='audit_log_export_1', state='ready', "
                            "url='https://files.example/e.csv?…')")
    with pytest.raises(ExportError):
        AuditLogExport.from_dict({"message": "not an export"})


# -- the command line -----------------------------------------------------------------------------
def _cli(*args: str, key: str = API_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WORKOS_API_KEY"}
    env["WORKOS_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "audit_instrument", "workos-export", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_cli_creates_waits_and_downloads(server: WorkOSServer, tmp_path: Path) -> None:
    server.export_polls_pending = 1
    server.export_csv = b"occurred_at,action\n2026-01-02T00:00:00Z,user.login\n"
    out = tmp_path / "jan.csv"
    done = _cli("--base-url", server.url, "--org", "org_1", "--from", "2026-01-01",
                "--to", "2026-02-01", "--action", "user.login", "--action", "user.logout",
                "--target", "team", "-o", str(out))
    assert done.returncode == 0, done.stderr
    size = len(server.export_csv)
    assert done.stdout == f"wrote {out} ({size} bytes) from export audit_log_export_0001\n"
    assert done.stderr == ""  # no progress line: stderr is not a terminal
    assert out.read_bytes() == server.export_csv
    assert server.requests[0].json() == {
        "organization_id": "org_1", "range_start": "2026-01-01T00:00:00.000Z",
        "range_end": "2026-02-01T00:00:00.000Z", "actions": ["user.login", "user.logout"],
        "targets": ["team"]}
    assert all("authorization" not in d.headers for d in server.downloads)


def test_cli_create_only_then_download_by_id(server: WorkOSServer, tmp_path: Path) -> None:
    created = _cli("--base-url", server.url, "--org", "org_1", "--from", "7d", "--create-only")
    assert created.returncode == 0, created.stderr
    export_id = created.stdout.strip()
    assert export_id == "audit_log_export_0001"
    done = _cli("--base-url", server.url, "--id", export_id, "-o", str(tmp_path / "x.csv"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.csv").exists()


@pytest.mark.parametrize(("args", "code", "message"), [
    (("--org", "org_1"), 2, "give --org and --from"),
    (("--id", "e_1", "--org", "org_1"), 2, "not both"),
    (("--org", "org_1", "--from", "soon"), 2, "expected a date/time"),
    (("--id", "audit_log_export_9999"), 1, "HTTP 404"),
])
def test_cli_mistakes_are_one_line(server: WorkOSServer, args: tuple[str, ...], code: int,
                                   message: str) -> None:
    done = _cli("--base-url", server.url, *args)
    assert done.returncode == code
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert io.StringIO(done.stdout).read() == ""


def test_the_exports_example_of_docs_workos_runs_as_written(
        server: WorkOSServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.docs import python_blocks

    server.export_polls_pending = 1
    [(_, example)] = python_blocks("docs/workos.md", section="Audit-log exports")
    exec(compile(example, "docs/workos.md", "exec"),
         {"WORKOS_URL": server.url, "CSV_PATH": str(tmp_path / "january.csv")})
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["audit_log_export_0001 pending",
                       "occurred_at,action,actor_id,actor_name,targets"]
    assert server.exports["audit_log_export_0001"]["request"]["actor_ids"] == ["user_1"]
