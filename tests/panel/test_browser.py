"""The control panel in a real browser: Debian's headless chromium driven by Playwright.

From the page alone (the cash register, the test codes, the keypad, the phone buttons) it
takes an approved payment, a PIN payment, a phone confirmation and a declined one, checks
the display, the last result and the receipt, and watches the frames go by in the traffic
log. Screenshots of each step are kept in ``artifacts/panel/`` (ignored by git) and in the
test's tmp_path; ``POSTERM_PANEL_SCREENSHOT=docs/panel.png`` also writes the README's one.

Chromium is Debian's (/usr/bin/chromium, .ci/chromium.sh installs it); ``playwright
install`` is never run. Without chromium or Playwright these tests skip, except in CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from posterm.emulator.control import TerminalControl
from posterm.emulator.firmware import FirmwareConfig
from posterm.emulator.runner import EmulatedTerminal
from posterm.panel.backend import LocalBackend
from posterm.panel.server import PanelServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "panel"
WAIT_MS = 30_000

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:   # pragma: no cover - the test extra has it
    sync_playwright = None

_missing = ("playwright is not installed" if sync_playwright is None
            else None if os.path.exists(CHROMIUM) or shutil.which("chromium") else f"{CHROMIUM} is missing")
if _missing and os.environ.get("CI"):
    raise RuntimeError(f"CI must run the browser test: {_missing} (.ci/chromium.sh installs Debian's chromium)")
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"{_missing} (.ci/chromium.sh installs it)")


@pytest.fixture
def panel(tmp_path):
    term = EmulatedTerminal.start(home=tmp_path / "home", config=FirmwareConfig(poll_interval=0.2, poll_attempts=50))
    control = TerminalControl(term)            # manual: only the page acts as the customer
    backend = LocalBackend([control])
    server = PanelServer(backend, "127.0.0.1:0")
    yield server, term
    server.close()
    backend.close()
    control.close()
    term.close()
    assert term.error is None


@pytest.fixture
def page(tmp_path):
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM if os.path.exists(CHROMIUM)
            else shutil.which("chromium"), headless=True, args=ARGS, viewport={"width": 1280, "height": 1000})
        try:
            p = context.new_page()
            p.set_default_timeout(WAIT_MS)
            yield p
        finally:
            context.close()


def shot(page, tmp_path, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for where in (tmp_path / f"{name}.png", ARTIFACTS / f"{name}.png"):
        page.screenshot(path=str(where), full_page=True)


def by(page, testid: str):
    return page.get_by_test_id(testid)


def charge(page, amount: str) -> None:
    by(page, "sale-amount").fill(amount)
    by(page, "sale").click()
    expect(by(page, "prompt")).to_have_text("asks: scan")
    expect(by(page, "display")).to_contain_text("Show your payment code")


def show_code(page, code: str) -> None:
    by(page, "code-select").select_option(code)
    by(page, "present-code").click()


def ends(page, outcome: str, receipt: str) -> None:
    expect(by(page, "last-result")).to_contain_text(outcome)
    expect(by(page, "register")).to_contain_text(outcome)
    expect(by(page, "receipts").locator("pre").first).to_contain_text(receipt)
    expect(by(page, "display")).to_contain_text("WELCOME")
    expect(by(page, "state")).to_have_text("IDLE")


def test_four_payments_by_clicking(panel, page, tmp_path):
    server, term = panel
    page.goto(server.url)
    expect(by(page, "connection")).to_have_text("live")
    expect(by(page, "state")).to_have_text("IDLE")
    expect(by(page, "display")).to_contain_text("WELCOME")

    # 1. approved: the register charges 12.34, the customer shows the approving test code
    charge(page, "12.34")
    expect(by(page, "display")).to_contain_text("12.34")
    shot(page, tmp_path, "1-waiting-for-code")
    show_code(page, "289900000000000001")
    ends(page, "approved", "APPROVED")
    rows = by(page, "traffic").locator("tbody tr")
    expect(rows.filter(has_text="PayRequest")).not_to_have_count(0)
    expect(rows.filter(has_text="PayResult")).not_to_have_count(0)
    expect(rows.filter(has_text="payment_code")).to_have_count(0)     # the register sent no code: the scanner read it
    expect(by(page, "traffic")).not_to_contain_text("289900000000000001")
    shot(page, tmp_path, "2-approved")

    # 2. a PIN payment: the account that always asks; the PIN typed on the page's keypad
    charge(page, "8.00")
    show_code(page, "289900000000000003")
    expect(by(page, "prompt")).to_have_text("asks: pin")
    expect(by(page, "display")).to_contain_text("Enter payment password")
    shot(page, tmp_path, "3-pin")
    for key in "147258":
        by(page, f"key-{key}").click()
    by(page, "key-OK").click()
    ends(page, "approved", "APPROVED")
    expect(rows.filter(has_text="PinVerify")).to_have_count(0)        # the host's message: not on the ECR line
    expect(by(page, "host-answer")).to_contain_text("APPROVED")

    # 3. confirmation on the phone: the account whose wallet waits for the customer
    charge(page, "3.00")
    show_code(page, "289900000000000005")
    expect(by(page, "prompt")).to_have_text("asks: phone")
    expect(by(page, "display")).to_contain_text("Confirm the payment on your phone")
    shot(page, tmp_path, "4-phone")
    by(page, "phone-confirm").click()
    ends(page, "approved", "APPROVED")

    # 4. declined: rejected by risk control
    charge(page, "5.00")
    show_code(page, "289900000000000007")
    ends(page, "declined", "DECLINED")
    expect(by(page, "last-result")).to_contain_text("risk_rejected")
    expect(by(page, "receipts").locator("pre").first).to_contain_text("RISK_REJECTED")
    expect(by(page, "fleet")).to_contain_text("approved 3")
    shot(page, tmp_path, "5-declined")
    assert [r.outcome.name for r in term.journal_orders()][-4:] == ["APPROVED", "APPROVED", "APPROVED", "DECLINED"]
    target = os.environ.get("POSTERM_PANEL_SCREENSHOT")
    if target:
        page.screenshot(path=target, full_page=False)


def test_the_dynamic_qr_is_drawn_and_the_export_downloads(panel, page, tmp_path):
    server, term = panel
    page.goto(server.url)
    expect(by(page, "state")).to_have_text("IDLE")
    import threading

    from posterm.families.native.ecr import Terminal

    box = {}

    def pay():
        with Terminal.open(term.port, journal=str(tmp_path / "drv.db")) as t:
            box["r"] = t.pay(2345, "CNY", dynamic_qr=True, timeout=60)
    th = threading.Thread(target=pay, daemon=True)
    th.start()
    expect(by(page, "prompt")).to_have_text("asks: qr")
    qr = by(page, "qr")
    expect(qr).to_be_visible()
    # The page's CSP forbids string evaluation (wait_for_function): wait on the image's own property.
    expect(qr).to_have_js_property("complete", True)
    assert qr.evaluate("img => img.naturalWidth") > 0
    shot(page, tmp_path, "6-qr")
    by(page, "scan-qr").click()
    expect(by(page, "last-result")).to_contain_text("approved")
    th.join(60)
    assert box["r"].approved
    with page.expect_download() as dl:
        by(page, "export").click()
    text = Path(dl.value.path()).read_text()
    assert 'action = "scan_qr"' in text and 'expect = "approved"' in text
