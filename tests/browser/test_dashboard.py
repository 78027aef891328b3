"""The dashboard in headless Chromium against one real engine (MLLP channels, the project's HL7 maps, a file
destination and an HTTP peer that refuses until told otherwise): log in, counters move while messages are
sent, search by MRN and open the detail, replay a dead letter until it is sent, the mapping diff, an XSS
payload in a patient name shown as text, and the page's security headers. Screenshots are kept (see
``conftest.shots``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from engine.api.dashboard import CSP
from engine.sources.mllp_client import send
from engine.store.access import AuditTrail, Tokens
from engine.store.schema import messages
from tests.api.running import RunningEngine
from tests.integration.harness import free_port, wait_until
from tests.integration.messages import adt, oru

pytestmark = [pytest.mark.integration]

XSS_NAME = "<script>alert('x')</script>^<img src=x onerror=alert(1)>"


class Peer:
    """An HTTP receiver: deliveries (``/fhir``) are refused with 400 (a permanent failure) while ``refuse`` is
    set; alert notices (``/alerts``) are always taken."""

    def __init__(self) -> None:
        self.refuse = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(400 if outer.refuse and self.path == "/fhir" else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Site:
    """The running engine, its MLLP ports, tokens per role and the mapping overlay folder."""

    def __init__(self, eng: RunningEngine, lab_port: int, adt_port: int, overlay: Path, peer: Peer) -> None:
        self.eng = eng
        self.url = eng.url
        self.lab_port = lab_port
        self.adt_port = adt_port
        self.overlay = overlay
        self.peer = peer
        tokens = Tokens(eng.engine.store)
        self.token = {role: tokens.create(role, f"browser-{role}")[1] for role in ("viewer", "operator", "admin")}

    def send_lab(self, *messages: bytes) -> None:
        replies = send("127.0.0.1", self.lab_port, list(messages), timeout_s=30)
        assert all(b"MSA|AA|" in r for r in replies), replies

    def status(self, message_id: str) -> str:
        row = self.eng.engine.store.message(message_id)
        return "" if row is None else str(row.status)

    def id_of(self, control_id: str) -> str:
        rows = [m for m in self.eng.engine.store.list_messages(limit=1000) if m.control_id == control_id]
        return str(rows[0].id) if rows else ""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    overlay = tmp / "overlay"
    (overlay / "hl7v2").mkdir(parents=True)
    lab_port, adt_port = free_port(), free_port()
    peer = Peer()
    mllp = {"type": "mllp", "host": "127.0.0.1", "read_timeout_s": 2}
    channels = [
        {"name": "lab", "source": {**mllp, "port": lab_port, "accept": ["ORU^R01"]},
         "identifiers": {"authority": "HOSP"},
         "destinations": [{"name": "ndjson", "type": "file", "path": str(tmp / "lab.ndjson")}]},
        {"name": "adt", "source": {**mllp, "port": adt_port, "accept": ["ADT^A01", "ADT^A08"]},
         "identifiers": {"authority": "HOSP"},
         "destinations": [{"name": "ehr", "type": "http", "url": peer.url + "/fhir", "timeout_s": 5,
                           "retry": {"max_attempts": 2, "min_backoff_ms": 50, "max_backoff_ms": 100}}],
         "alerts": {"interval_s": 0.5, "targets": [{"name": "pager", "type": "http", "url": peer.url + "/alerts"}],
                    "rules": [{"kind": "dead_letters", "target": "pager"}]}},
    ]  # fmt: skip
    try:
        with RunningEngine(tmp / "engine", channels, hl7_maps=True, mapping_overlays=[overlay]) as eng:
            yield Site(eng, lab_port, adt_port, overlay, peer)
    finally:
        peer.close()


@pytest.fixture
def page(browser: Any, site: Site, shots: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage); every dialog it opens is recorded in ``page.dialogs``."""
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    tab = context.new_page()
    tab.dialogs = []
    tab.console_errors = []
    tab.on("dialog", lambda d: (tab.dialogs.append(d.message), d.dismiss()))
    tab.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
    tab.on("pageerror", lambda e: tab.console_errors.append(str(e)))
    tab.set_default_timeout(10_000)
    try:
        yield tab
        # the page keeps its own policy: nothing it loads or runs is refused by the CSP
        assert not [e for e in tab.console_errors if "Content Security Policy" in e or "Refused to" in e]
    finally:
        print("browser console errors:", tab.console_errors)
        tab.screenshot(path=str(shots / "last.png"))
        context.close()


def login(page: Any, site: Site, role: str) -> None:
    page.goto(site.url + "/")
    page.fill("#token", site.token[role])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#channels tbody tr[data-channel='lab']")


def cell(page: Any, channel: str, counter: str) -> int:
    text = page.inner_text(f"#channels tr[data-channel='{channel}'] td[data-counter='{counter}']")
    return int(text.replace(",", ""))


COUNTED = ("received", "filtered", "queued", "sent", "errored", "dead")


def sql_count(site: Site, channel: str, counter: str) -> int:
    """A counter as a plain SQL count of the store's messages."""
    statuses = {"queued": ("received", "transformed", "held"), "errored": ("error",)}.get(counter, (counter,))
    with site.eng.engine.store.work.connect() as conn:
        q = select(func.count()).select_from(messages).where(messages.c.channel == channel)
        if counter != "received":
            q = q.where(messages.c.status.in_(statuses))
        return int(conn.execute(q).scalar_one())


def test_security_headers_and_no_inline_code(site: Site) -> None:
    page = httpx.get(site.url + "/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    html = page.text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/app.js">']
    assert "style=" not in html and "<style" not in html
    js = httpx.get(site.url + "/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == CSP
    assert "innerHTML" not in js.text.replace("innerHTML is never used", "")
    again = httpx.get(site.url + "/static/app.js", headers={"if-none-match": js.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(site.url + "/static/../engine.yaml").status_code == 404
    assert httpx.get(site.url + "/static/settings.py").status_code == 404


def test_login_then_counters_move_live(page: Any, site: Site, shots: Path) -> None:
    page.goto(site.url + "/")
    page.fill("#token", "il_not-a-token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    page.console_errors.clear()  # the browser logs the 401 of that attempt
    page.screenshot(path=str(shots / "login.png"))

    login(page, site, "viewer")
    assert site.token["viewer"] not in page.url
    assert page.evaluate("sessionStorage.getItem('interlink.token')") == site.token["viewer"]
    page.wait_for_selector("#live.on")
    actions = page.query_selector("#channels tr[data-channel='lab'] td.actions")  # a viewer's: no button
    stamp = page.inner_text("#main .toolbar p")
    wait_until(lambda: page.inner_text("#main .toolbar p") != stamp, 5, "the next live sample")
    assert actions.evaluate("b => b.isConnected")  # rows are updated in place (an admin's button: test_actions_…)
    before = cell(page, "lab", "received")
    site.send_lab(*(oru(f"LIVE{i}", mrn=f"LIVE-MRN-{i}") for i in range(3)))
    wait_until(lambda: cell(page, "lab", "received") >= before + 3, 10, "the received counter to move")
    site.send_lab(*(oru(f"LIVE{i}", mrn=f"LIVE-MRN-{i}") for i in range(3, 5)))
    wait_until(lambda: cell(page, "lab", "received") >= before + 5, 10, "the received counter to move again")
    wait_until(lambda: cell(page, "lab", "sent") >= before + 5, 20, "the sent counter to move")
    wait_until(
        lambda: {k: cell(page, "lab", k) for k in COUNTED} == {k: sql_count(site, "lab", k) for k in COUNTED},
        5,
        "every counter of the page to equal the SQL count",
    )
    assert page.locator("#channels tr[data-channel='lab'] svg.chart polyline.received").count() == 1
    page.screenshot(path=str(shots / "channels.png"), full_page=True)

    page.click("#nav a[data-view=queues]")
    page.wait_for_selector("#queues tbody tr")
    page.goto(f"{site.url}/#/message/{site.id_of('LIVE0')}")  # a viewer sees metadata, never content
    page.wait_for_selector("#main dl.meta")
    assert "needs an operator" in page.inner_text("#main")
    assert page.locator("#raw").count() == 0
    assert not page.console_errors


def test_actions_follow_the_role(page: Any, site: Site, shots: Path) -> None:
    """The page offers only what the token's role may do (GET /api/v1/me): a viewer no action at all, an
    operator the message and dead-letter actions but no channel control, an admin everything."""
    site.send_lab(oru("ROLE1", mrn="ROLE-MRN-1"))
    wait_until(lambda: site.status(site.id_of("ROLE1")) == "sent", 20, "the message to be sent")
    offered: dict[str, dict[str, Any]] = {}
    for role in ("viewer", "operator", "admin"):
        login(page, site, role)
        row = "#channels tr[data-channel='lab'] td.actions"
        seen = {
            "channel control": page.locator(f"{row} button").count(),
            "reload": page.locator("#reload").count(),
            "views": [v for v in ("diff", "audit", "tokens") if page.is_visible(f"#nav a[data-view={v}]")],
        }
        if role == "admin":  # rows are updated in place: a button under the pointer survives the next sample
            button, stamp = page.query_selector(f"{row} button"), page.inner_text("#main .toolbar p")
            wait_until(lambda s=stamp: page.inner_text("#main .toolbar p") != s, 5, "the next live sample")
            assert button.evaluate("b => b.isConnected")
        page.goto(f"{site.url}/#/message/{site.id_of('ROLE1')}")
        page.wait_for_selector("#main dl.meta")
        seen["message actions"] = page.locator("#main button:text-is('Reprocess')").count()
        page.click("#nav a[data-view=deadletters]")
        page.wait_for_selector("#deadletters, #no-deadletters")
        seen["replay"] = page.locator("#main button:has-text('Replay')").count() > 0
        page.screenshot(path=str(shots / f"{role}.png"), full_page=True)
        offered[role] = seen
        page.click("#logout")
    assert offered["viewer"] == {"channel control": 0, "reload": 0, "views": [], "message actions": 0,
                                 "replay": False}  # fmt: skip
    assert offered["operator"] == {"channel control": 0, "reload": 0, "views": ["diff"], "message actions": 1,
                                   "replay": True}  # fmt: skip
    assert offered["admin"]["channel control"] >= 1 and offered["admin"]["reload"] == 1
    assert offered["admin"]["views"] == ["diff", "audit", "tokens"] and offered["admin"]["message actions"] == 1


def test_search_by_mrn_and_detail(page: Any, site: Site, shots: Path) -> None:
    site.send_lab(oru("FIND1", mrn="FIND-MRN-77"), oru("OTHER1", mrn="OTHER-MRN-1"))
    wait_until(lambda: site.status(site.id_of("FIND1")) == "sent", 20, "the message to be sent")
    login(page, site, "operator")
    page.click("#nav a[data-view=messages]")
    page.fill("#search input[name=mrn]", "FIND-MRN-77")
    page.click("#search button[type=submit]")
    rows = page.locator("#results tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1
    assert "FIND1" in rows.first.inner_text()
    rows.first.click()
    page.wait_for_selector("#raw .segment")
    segments = page.locator("#raw .segment")
    assert segments.count() == 5  # MSH, PID, PV1, OBR, OBX: one per row
    assert segments.nth(1).inner_text().startswith("PID|")
    pid3 = "#raw .segment:nth-child(2) [data-place='PID-3']"
    assert page.get_attribute(pid3, "title") == "PID-3 · Patient Identifier List"  # the field's tooltip
    page.hover(pid3)
    assert re.fullmatch(r"PID-3(\.\d)? · Patient Identifier List", page.inner_text("#place"))  # under the pointer
    assert "FIND-MRN-77" in page.inner_text("#raw [data-place='PID-3']")
    assert page.inner_text("#raw [data-place='MSH-10']") == "FIND1"  # MSH-1 is the separator: MSH-3 onwards shift
    assert page.inner_text("#raw [data-place='MSH-9.1']") == "ORU"
    assert page.inner_text("#raw [data-place='PID-3.4']") == "HOSP"
    bundle = page.inner_text("#bundle")
    assert '"resourceType": "Bundle"' in bundle
    page.wait_for_selector("#attempts li.ok")
    page.screenshot(path=str(shots / "detail.png"), full_page=True)


def test_reprocess_errors_after_a_dry_run_count(page: Any, site: Site) -> None:
    site.send_lab(oru("NOPID1", pid=False))  # no patient: the mapping refuses it
    wait_until(lambda: site.status(site.id_of("NOPID1")) == "error", 20, "the message to end in error")
    login(page, site, "operator")
    page.click("#nav a[data-view=messages]")
    page.select_option("#search select[name=status]", "error")
    page.select_option("#search select[name=channel]", "lab")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr")
    errors = page.locator("#results tbody tr").count()
    page.click("#reprocess-matching")
    page.wait_for_selector(f"#reprocess-matching:text-is('Reprocess {errors} messages: confirm')")
    page.click("#reprocess-matching")
    page.wait_for_selector(f"#toast:has-text('Reprocessing {errors} messages now.')")
    done = AuditTrail(site.eng.engine.store).page(action="message.reprocess", limit=10).entries
    assert site.id_of("NOPID1") in [m for e in done for m in e.message_ids]


def test_dead_letter_replayed_becomes_sent(page: Any, site: Site, shots: Path) -> None:
    site.peer.refuse = True
    replies = send("127.0.0.1", site.adt_port, [adt("DEAD1", mrn="DEAD-MRN-1")], timeout_s=30)
    assert b"MSA|AA|" in replies[0]
    wait_until(lambda: site.status(site.id_of("DEAD1")) == "dead", 20, "the message to be dead")
    message_id = site.id_of("DEAD1")
    login(page, site, "operator")
    page.wait_for_selector("#alerts-badge:has-text('1 alert')")  # the channel's dead_letters rule fired
    page.click("#alerts-badge")
    alert = page.locator("#alerts tr.alert.open", has_text="dead_letters")
    alert.locator("button.ack").click()
    page.wait_for_selector("#alerts tr.alert.acknowledged")
    page.wait_for_selector("#alerts-badge", state="hidden")  # nothing left unacknowledged
    page.click("#nav a[data-view=deadletters]")
    row = page.locator(f"#deadletters tr[data-id='{message_id}']")
    row.wait_for()
    page.screenshot(path=str(shots / "deadletters.png"), full_page=True)
    site.peer.refuse = False
    started = time.monotonic()
    row.locator("button.replay").click()
    wait_until(lambda: site.status(message_id) == "sent", 10, "the replayed message to be sent")
    assert time.monotonic() - started < 10  # at once, not after the sweeper's interval
    page.wait_for_selector(f"#deadletters tr[data-id='{message_id}']", state="detached")
    page.goto(f"{site.url}/#/message/{message_id}")
    page.wait_for_selector("#main dd:text-is('sent')")


def test_admin_pauses_a_channel_and_makes_a_token(page: Any, site: Site, shots: Path) -> None:
    login(page, site, "admin")
    state = "#channels tr[data-channel='adt'] .state"
    page.click("#channels tr[data-channel='adt'] button:text-is('pause')")
    page.wait_for_selector(f"{state}:text-is('paused')")  # through the live stream
    page.click("#channels tr[data-channel='adt'] button:text-is('resume')")
    page.wait_for_selector(f"{state}:text-is('running')")
    bad = site.eng.settings.channels_dir / "broken.yaml"
    bad.write_text("name: broken\nsource: {type: mllp, port: nope}\n")
    try:
        page.click("#reload")
        page.wait_for_selector("#toast:has-text('broken.yaml:')")  # refused, naming the file and line
    finally:
        bad.unlink()
    page.click("#reload")
    page.wait_for_selector("#toast:has-text('Reloaded: nothing changed.')")
    page.click("#nav a[data-view=tokens]")
    page.fill("#main input[name=name]", "night-shift")
    page.select_option("#main select[name=role]", "viewer")
    page.click("#main form button[type=submit]")
    secret = page.inner_text("#new-token code")
    assert secret.startswith("il_")
    page.wait_for_selector("#tokens td:text-is('night-shift')")
    assert Tokens(site.eng.engine.store).verify(secret) is not None
    page.screenshot(path=str(shots / "tokens.png"), full_page=True)


def test_mapping_diff(page: Any, site: Site, shots: Path) -> None:
    site.send_lab(oru("DIFF1", mrn="DIFF-MRN-1"))
    wait_until(lambda: site.status(site.id_of("DIFF1")) == "sent", 20, "the message to be sent")
    overlay = site.overlay / "hl7v2" / "codesystems" / "identifier-systems.yaml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_text(
        "description: A site's MRN authority.\nmerge: true\nmap:\n  HOSP: https://site.example.org/mrn\n"
    )
    try:
        login(page, site, "operator")
        page.click("#nav a[data-view=diff]")
        page.select_option("#main select[name=channel]", "lab")
        page.fill("#main input[name=limit]", "5")
        page.click("#main form button[type=submit]")
        page.wait_for_selector("#diff .diff-message")
        assert "https://site.example.org/mrn" in page.inner_text("#diff")
        page.screenshot(path=str(shots / "diff.png"))
    finally:
        overlay.unlink()


def test_script_in_patient_name_is_text(page: Any, site: Site, shots: Path) -> None:
    """Markup in what a sender sends (PID-5, and MSH-10 shown in listings) reaches the page as text only."""
    control = "XSS1<img src=x onerror=alert(3)>"
    message = oru(control, mrn="XSS-MRN-1").replace(b"TESTER^ALEX^J", XSS_NAME.encode())
    site.send_lab(message)
    wait_until(lambda: site.status(site.id_of(control)) in ("sent", "error"), 20, "the message to be processed")
    login(page, site, "operator")
    page.click("#nav a[data-view=messages]")
    page.fill("#search input[name=mrn]", "XSS-MRN-1")
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results tbody tr")
    assert control in page.inner_text("#results")
    page.click("#results tbody tr >> nth=0")
    page.wait_for_selector("#raw .segment")
    raw = page.inner_text("#raw")
    assert "<script>alert('x')</script>" in raw and "<img src=x onerror=alert(1)>" in raw
    assert "<script>alert('x')</script>" in page.inner_text("#bundle")  # the mapped Patient.name, as text
    assert control in page.inner_text("#main dl.meta")
    assert page.locator("#main img").count() == 0
    assert page.locator("script").count() == 1  # app.js only
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.dialogs == []
    page.screenshot(path=str(shots / "xss.png"), full_page=True)
