"""Trusted-proxy client IP and user resolution shared by the middlewares."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from starlette.authentication import SimpleUser, UnauthenticatedUser

from audit_instrument import AuditConfigError, configure, current_context, stats
from audit_instrument.integrations import TrustedProxies, user_party
from audit_instrument.integrations._request import RequestAudit


class TestTrustedProxies:
    def test_without_trusted_proxies_the_header_is_ignored(self) -> None:
        assert TrustedProxies().client_ip("192.0.2.1", "203.0.113.7") == "192.0.2.1"

    def test_header_from_an_untrusted_peer_is_ignored(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8"])
        assert proxies.client_ip("192.0.2.1", "203.0.113.7") == "192.0.2.1"

    def test_right_most_untrusted_hop_wins_over_a_spoofed_left_part(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8", "172.16.0.1"])
        # the client wrote "1.1.1.1" itself; 10.0.0.5 and 172.16.0.1 are our proxies
        chain = "1.1.1.1, 203.0.113.7, 10.0.0.5"
        assert proxies.client_ip("172.16.0.1", chain) == "203.0.113.7"

    def test_every_hop_trusted_gives_the_left_most(self) -> None:
        proxies = TrustedProxies("10.0.0.0/8, 127.0.0.1")
        assert proxies.client_ip("127.0.0.1", "10.1.1.1, 10.2.2.2") == "10.1.1.1"

    def test_garbage_entry_stops_at_the_last_verified_hop(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8"])
        assert proxies.client_ip("10.0.0.1", "203.0.113.7, unknown") == "10.0.0.1"
        assert proxies.client_ip("10.0.0.1", "evil, 10.0.0.9") == "10.0.0.9"

    def test_ports_brackets_ipv6_and_mapped_ipv4(self) -> None:
        proxies = TrustedProxies(["::1", "10.0.0.0/8"])
        assert proxies.client_ip("::1", "[2001:db8::7]:443") == "2001:db8::7"
        assert proxies.client_ip("::ffff:10.0.0.1", "203.0.113.7:8080") == "203.0.113.7"

    def test_star_trusts_every_peer(self) -> None:
        assert TrustedProxies("*").client_ip("192.0.2.1", "203.0.113.7") == "203.0.113.7"

    def test_unknown_or_missing_peer(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8"])
        assert proxies.client_ip(None, "203.0.113.7") is None
        assert proxies.client_ip("testclient", "203.0.113.7") == "testclient"
        assert proxies.client_ip("10.0.0.1", None) == "10.0.0.1"

    def test_long_headers_are_walked_and_garbage_is_not_an_address(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8"])
        long_chain = ", ".join(["10.0.0.2"] * 100) + ", 203.0.113.7, 10.0.0.3"
        assert proxies.client_ip("10.0.0.1", long_chain) == "203.0.113.7"
        assert proxies.client_ip("10.0.0.1", "x" * 5000 + ", 10.0.0.3") == "10.0.0.3"

    @pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.internal", 10])
    def test_bad_configuration_is_a_config_error(self, bad: object) -> None:
        with pytest.raises(AuditConfigError, match="trusted_proxies"):
            TrustedProxies([bad])  # type: ignore[list-item]


@dataclass
class _User:
    id: int
    email: str


class TestUserParty:
    def test_objects_mappings_tuples_and_strings(self) -> None:
        assert user_party(_User(7, "a@example.com")) == ("7", "a@example.com")
        assert user_party({"id": "u1", "name": "Ann"}) == ("u1", "Ann")
        assert user_party(("u2", "Bob")) == ("u2", "Bob")
        assert user_party("alice") == ("alice", "alice")

    def test_anonymous_users_mean_no_actor(self) -> None:
        assert user_party(None) is None
        assert user_party("") is None
        assert user_party(UnauthenticatedUser()) is None

    def test_starlette_user_uses_identity(self) -> None:
        assert user_party(SimpleUser("carol")) == ("carol", "carol")


def _no_user(request: object) -> object:
    return None


class TestRequestAudit:
    def test_failing_resolvers_are_logged_once_and_the_event_has_no_actor(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(request: object) -> object:
            raise RuntimeError("session store down")

        requests: RequestAudit[object] = RequestAudit(
            actor=broken, group=broken, trusted_proxies=(), default_actor=_no_user)
        with caplog.at_level(logging.ERROR, "audit_instrument"):
            for _ in range(3):
                with requests.scope(object(), peer="192.0.2.1", forwarded_for=None,
                                    user_agent="ua"):
                    ctx = current_context()
        assert (ctx.actor_id, ctx.group, ctx.location) == (None, None, "192.0.2.1")
        failed = [r.getMessage() for r in caplog.records if r.exc_info]
        assert failed == [
            "audit_instrument: the actor resolver failed: RuntimeError: session store down",
            "audit_instrument: the group resolver failed: RuntimeError: session store down",
        ]
        assert sum(stats().failures.values()) == 6

    def test_strict_mode_raises_resolver_errors(self) -> None:
        configure(strict=True)

        def broken(request: object) -> object:
            raise RuntimeError("session store down")

        requests: RequestAudit[object] = RequestAudit(
            actor=broken, group=None, trusted_proxies=(), default_actor=_no_user)
        with (pytest.raises(RuntimeError, match="session store down"),
              requests.scope(object(), peer=None, forwarded_for=None, user_agent=None)):
            current_context()

    def test_invalid_user_value_is_logged_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        requests: RequestAudit[object] = RequestAudit(
            actor=lambda request: ("too", "many", "parts"), group="org_1", trusted_proxies=(),
            default_actor=_no_user)
        with caplog.at_level(logging.ERROR, "audit_instrument"):
            with requests.scope(object(), peer=None, forwarded_for=None, user_agent=None):
                ctx = current_context()
        assert (ctx.actor_id, ctx.group) == (None, "org_1")
        assert "a tuple must be (id, name)" in caplog.text

    def test_raw_header_bytes_are_latin_1(self) -> None:
        requests: RequestAudit[object] = RequestAudit(
            actor=lambda request: {"id": "user_1", "email": "a@example.com"}, group="org_1",
            trusted_proxies=["10.0.0.0/8"], default_actor=_no_user)
        with requests.scope(object(), peer="10.0.0.1", forwarded_for=b"203.0.113.7",
                            user_agent=b"caf\xe9/1.0"):
            first = current_context()
        assert (first.actor_id, first.actor_name, first.group, first.location,
                first.user_agent) == ("user_1", "a@example.com", "org_1", "203.0.113.7",
                                      "caf\u00e9/1.0")
        # the str headers of WSGI and Django give the same context as bytes
        with requests.scope(object(), peer="10.0.0.1", forwarded_for="203.0.113.7",
                            user_agent="caf\u00e9/1.0"):
            assert current_context() == first

    def test_actor_and_group_are_resolved_late_and_kept_once_known(self) -> None:
        request: dict[str, object] = {}
        calls: list[str] = []

        def actor(req: dict[str, object]) -> object:
            calls.append("actor")
            return req.get("user")

        requests: RequestAudit[dict[str, object]] = RequestAudit(
            actor=actor, group=lambda req: req.get("org"), trusted_proxies=(),
            default_actor=_no_user)
        with requests.scope(request, peer=None, forwarded_for=None, user_agent=None):
            assert current_context().actor_id is None  # not authenticated yet
            request.update(user={"id": "user_1"}, org="org_1")  # authentication ran
            assert (current_context().actor_id, current_context().group) == ("user_1", "org_1")
            request.update(user={"id": "someone_else"})
            assert current_context().actor_id == "user_1"  # kept for the rest of the request
        assert calls == ["actor", "actor"]

    def test_a_group_resolver_is_asked_per_request(self) -> None:
        groups = iter(["org_1", "org_2"])
        requests: RequestAudit[object] = RequestAudit(
            actor=None, group=lambda request: next(groups), trusted_proxies=(),
            default_actor=_no_user)
        for expected in ("org_1", "org_2"):
            with requests.scope(object(), peer=None, forwarded_for=None, user_agent=None):
                assert current_context().group == expected

    def test_bad_resolver_declarations_fail_at_construction(self) -> None:
        with pytest.raises(AuditConfigError, match="actor="):
            RequestAudit(actor="request.user", group=None, trusted_proxies=(),  # type: ignore[arg-type]
                         default_actor=_no_user)
        with pytest.raises(AuditConfigError, match="group="):
            RequestAudit(actor=None, group=42, trusted_proxies=(),  # type: ignore[arg-type]
                         default_actor=_no_user)
