"""Trusted-proxy client IP and user resolution shared by the middlewares."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
from starlette.authentication import SimpleUser, UnauthenticatedUser

from audit_instrument import AuditConfigError, configure, current_context
from audit_instrument.integrations import TrustedProxies, user_party
from audit_instrument.integrations._common import RequestBinder, RequestBlock


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

    def test_answers_are_remembered_and_the_memory_is_bounded(self) -> None:
        proxies = TrustedProxies(["10.0.0.0/8"])
        for n in range(5000):
            assert proxies.client_ip("10.0.0.1", f"203.0.{n // 256}.{n % 256}") == (
                f"203.0.{n // 256}.{n % 256}"
            )
        assert proxies.client_ip("10.0.0.1", "203.0.0.7") == "203.0.0.7"  # asked again
        assert 0 < len(proxies._seen) <= 4096
        long_chain = ", ".join(["10.0.0.2"] * 100) + ", 203.0.113.7, 10.0.0.3"
        assert proxies.client_ip("10.0.0.1", long_chain) == "203.0.113.7"
        assert ("10.0.0.1", long_chain) not in proxies._seen  # long headers are not kept
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


class TestRequestBinder:
    def test_failing_resolver_is_logged_and_the_request_has_no_actor(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(request: object) -> object:
            raise RuntimeError("session store down")

        binder: RequestBinder[object] = RequestBinder(
            actor=broken, group=broken, trusted_proxies=()
        )
        with caplog.at_level(logging.ERROR, "audit_instrument"):
            user = binder.user(object(), lambda r: None)
            with RequestBlock(binder.context(object(), user, "192.0.2.1", None, "ua")):
                ctx = current_context()
        assert (ctx.actor_id, ctx.group, ctx.location) == (None, None, "192.0.2.1")
        failed = [r.getMessage() for r in caplog.records if r.exc_info]
        assert failed == [
            "audit_instrument: the middleware's actor resolver failed",
            "audit_instrument: the middleware's group resolver failed",
        ]

    def test_strict_mode_raises_resolver_errors(self) -> None:
        configure(strict=True)

        def broken(request: object) -> object:
            raise RuntimeError("session store down")

        binder: RequestBinder[object] = RequestBinder(actor=broken, group=None,
                                                      trusted_proxies=())
        with pytest.raises(RuntimeError, match="session store down"):
            binder.user(object(), lambda r: None)

    def test_invalid_user_value_is_logged_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        binder: RequestBinder[object] = RequestBinder(actor=None, group="org_1",
                                                      trusted_proxies=())
        with caplog.at_level(logging.ERROR, "audit_instrument"):
            with RequestBlock(binder.context(object(), ("too", "many", "parts"), None, None,
                                             None)):
                ctx = current_context()
        assert (ctx.actor_id, ctx.group) == (None, "org_1")
        assert "could not read an actor" in caplog.text

    def test_raw_header_bytes_are_latin_1_and_contexts_are_shared_boundedly(self) -> None:
        binder: RequestBinder[object] = RequestBinder(actor=None, group="org_1",
                                                      trusted_proxies=["10.0.0.0/8"])
        user = {"id": "user_1", "email": "a@example.com"}
        first = binder.context(object(), user, "10.0.0.1", b"203.0.113.7", b"caf\xe9/1.0")
        assert (first.actor_id, first.actor_name, first.group, first.location,
                first.user_agent) == ("user_1", "a@example.com", "org_1", "203.0.113.7",
                                      "caf\u00e9/1.0")
        # same request again: the same (frozen) context; another user: its own
        assert binder.context(object(), dict(user), "10.0.0.1", b"203.0.113.7",
                              b"caf\xe9/1.0") is first
        other = binder.context(object(), {"id": "user_2"}, "10.0.0.1", b"203.0.113.7",
                               b"caf\xe9/1.0")
        assert (other.actor_id, other.location) == ("user_2", "203.0.113.7")
        # the str headers of WSGI and Django give the same context as bytes
        text = binder.context(object(), user, "10.0.0.1", "203.0.113.7", "caf\u00e9/1.0")
        assert text == first
        for n in range(5000):
            agent = f"agent/{n}"
            assert binder.context(object(), user, "10.0.0.1", None, agent).user_agent == agent
        assert 0 < len(binder._bound) <= 4096
        long_agent = "x" * 1000
        assert binder.context(object(), user, "10.0.0.1", None, long_agent).user_agent == (
            long_agent)
        assert not any(key[4] == long_agent for key in binder._bound)  # long headers: not kept

    def test_a_group_resolver_is_asked_on_every_request(self) -> None:
        groups = iter(["org_1", "org_2"])
        binder: RequestBinder[object] = RequestBinder(
            actor=None, group=lambda request: next(groups), trusted_proxies=())
        user = ("user_1", "a@example.com")
        assert binder.context(object(), user, "192.0.2.1", None, "ua").group == "org_1"
        assert binder.context(object(), user, "192.0.2.1", None, "ua").group == "org_2"

    def test_bad_resolver_declarations_fail_at_construction(self) -> None:
        with pytest.raises(AuditConfigError, match="actor="):
            RequestBinder(actor="request.user", group=None, trusted_proxies=())  # type: ignore[arg-type]
        with pytest.raises(AuditConfigError, match="group="):
            RequestBinder(actor=None, group=42, trusted_proxies=())  # type: ignore[arg-type]
