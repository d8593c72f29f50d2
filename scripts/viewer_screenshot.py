"""Regenerate docs/img/viewer.png: the viewer on a store of the demo's tweet service.

Run by hand (not by the test suite, so a test run leaves the clone clean):

    python scripts/viewer_screenshot.py [--out docs/img/viewer.png]

Needs Debian's Chromium (``apt-get install chromium``) and Playwright (the
test extra). The store holds two weeks of made-up activity of the demo's
tweet service in ``organization_1`` (logins, tweets posted, edited and
deleted by a handful of users, so the chart has something to show), then
the demo's own events (``python -m audit_instrument demo``) as the newest.
The badge is verified before the picture is taken.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_instrument import AuditEvent
from audit_instrument.demo import run_demo
from audit_instrument.store import AuditStore
from audit_instrument.viewer.server import make_server

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
USERS = [("user_3", "carol@example.com"), ("user_4", "dan@example.com"),
         ("user_5", "erin@example.com"), ("user_6", "frank@example.com")]
BODIES = ["Lunch at noon?", "Shipping the new release today", "Who has the slides?",
          "Great talk this morning", "Coffee machine is fixed"]


def _history(store: AuditStore, days: int = 14) -> None:
    """Made-up activity of the tweet service over the last ``days`` days."""
    rng = random.Random(18)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    tweet = 100
    for day in range(days, 0, -1):
        for _ in range(rng.randint(6, 18)):
            user_id, email = rng.choice(USERS)
            when = now - timedelta(days=day, minutes=rng.randint(0, 1439))
            action, kind, metadata = rng.choice([
                ("user.login", "C", {"method": "password"}),
                ("tweet.create", "C", {"body": rng.choice(BODIES)}),
                ("tweet.update", "U", {"body_was": "Lunch at noon", "body": "Lunch at noon?"}),
                ("tweet.delete", "D", {"body_was": rng.choice(BODIES)}),
            ])
            tweet += 1
            target = (user_id, email) if action == "user.login" else (f"tweet_{tweet}", email)
            store.send(AuditEvent(
                group="organization_1", action=action, action_type=kind, actor_id=user_id,
                actor_name=email, target_id=target[0], target_name=target[1],
                location="192.0.2.10", user_agent="Mozilla/5.0 (X11; Linux x86_64)",
                occurred_at=when, metadata=metadata,
            ))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "viewer.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="viewer-shot-"))
    store = AuditStore(folder / "audit.db")
    _history(store)
    run_demo(store)
    server = make_server(store, port=0).start()
    try:
        server.viewer.chain.start()
        server.viewer.chain.wait(120)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(folder / "profile"), executable_path="/usr/bin/chromium", headless=True,
                args=FLAGS, viewport={"width": 1280, "height": 900}, device_scale_factor=1,
                java_script_enabled=False,
            )
            page = context.new_page()
            page.goto(server.url + "?limit=12")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=False)
            context.close()
    finally:
        server.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
