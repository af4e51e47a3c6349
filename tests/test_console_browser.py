"""The sandbox console in a real browser, against the real ``extmsg serve --sandbox``.

One server and one headless Chromium for the whole module. Each round trip is what a new
user does: write as the customer on the left, see the conversation appear on the agent desk,
answer it, see the answer arrive on the customer's device with its state, end it. Every test
saves screenshots (see :mod:`tests.browser`) and asserts the browser console stayed clean.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from extmsg.testing.helpers import free_port

from .browser import console_errors, save_screenshot, start_chromium

WAIT = 20.0


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], sandbox_port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{sandbox_port}"
        self.log = log

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/sandbox/api{path}", timeout=5) as resp:  # noqa: S310
            return json.load(resp)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console")
    log = folder / "serve.log"
    port, sandbox_port, admin_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXTMSG_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extmsg",
                "serve",
                "--sandbox",
                "--port",
                str(port),
                "--sandbox-port",
                str(sandbox_port),
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
            ],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    srv = Server(proc, sandbox_port, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            if len(srv.api("/customers")) == 3 and len(srv.api("/channels")) == 3:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"extmsg serve --sandbox did not come up:\n{log.read_text()}")
        time.sleep(0.1)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    driver = start_chromium()
    driver.get(f"{server.url}/sandbox/")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real PNG (a blue square) the customer sends."""
    width = 48
    rows = b"".join(b"\x00" + b"\x2f\x5b\xd3" * width for _ in range(width))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, width, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
    path = tmp_path_factory.mktemp("files") / "parcel.png"
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


def wait_for(driver: Any, what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            found = check()
        except Exception:  # stale or not yet there: try again
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            save_screenshot(driver, "timeout-" + what.replace(" ", "-")[:40])
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def css(driver: Any, selector: str) -> list[Any]:
    return list(driver.find_elements("css selector", selector))


def one(driver: Any, selector: str) -> Any:
    return driver.find_element("css selector", selector)


def conversation_with(driver: Any, text: str) -> Any:
    for item in css(driver, "#conversations .conv"):
        if text in item.text:
            return item
    return None


def agent_message(driver: Any, text: str) -> Any:
    for item in css(driver, "#messages li"):
        if text in item.text:
            return item
    return None


def customer_entry(driver: Any, channel: str, text: str) -> Any:
    for item in css(driver, f"#device-{channel} .thread li"):
        if text in item.text:
            return item
    return None


ROUND_TRIPS = [
    # channel, messenger tab label, how the customer's device shows a delivered answer
    ("sms-twilio-sandbox", "SMS", ".state.delivered"),
    ("whatsapp-sandbox", "WhatsApp", ".ticks.delivered"),
    ("email-smtp-sandbox", "Email", ".state.delivered"),
]


@pytest.mark.parametrize(("channel", "tab", "delivered"), ROUND_TRIPS)
def test_round_trip(browser: Any, picture: Path, channel: str, tab: str, delivered: str) -> None:
    d = browser
    slug = tab.lower()
    tag = uuid.uuid4().hex[:6]
    question = f"Where is my parcel {tag}?"
    answer = f"It arrives tomorrow morning {tag}."

    # the fixes: with nothing selected there is no reply form and nothing to end
    if not css(d, "#conversations .conv[aria-current=true]"):
        assert not one(d, "#reply").is_displayed()
        assert not one(d, "#end").is_enabled()

    # the customer writes
    one(d, f"#tab-{channel}").click()
    device = one(d, f"#device-{channel}")
    assert device.is_displayed()
    if slug == "email":
        one(d, f"#subject-{channel}").send_keys(f"Parcel {tag}")
    one(d, f"#text-{channel}").send_keys(question)
    if slug == "whatsapp":  # with a picture
        one(d, f"#file-{channel}").send_keys(str(picture))
    one(d, f"#send-{channel}").click()
    wait_for(
        d, "the customer's message on their device", lambda: customer_entry(d, channel, question)
    )

    # the conversation appears on the agent desk, with its channel
    item = wait_for(d, "the conversation on the agent desk", lambda: conversation_with(d, tag))
    assert tab in item.text
    key = item.find_element("xpath", "..").get_attribute("data-key")
    assert "1 message ·" in item.text  # one message, said so
    item.click()
    asked = wait_for(
        d, "the customer's message in the agent pane", lambda: agent_message(d, question)
    )
    if slug == "whatsapp":
        wait_for(d, "the picture", lambda: asked.find_elements("css selector", "img"))
        assert customer_entry(d, channel, question).find_elements("css selector", "img")
    assert one(d, "#reply").is_displayed()
    assert one(d, "#end").is_enabled()
    save_screenshot(d, f"{slug}-1-customer-wrote")

    # the agent marks the message read (a draft survives the live updates)
    one(d, "#reply-text").send_keys("draft")
    mark = agent_message(d, question).find_element("css selector", "button")
    mark.click()
    wait_for(d, "the message read", lambda: "Read" in agent_message(d, question).text)
    assert one(d, "#reply-text").get_attribute("value") == "draft", "a live update lost the draft"
    # an opened delivery stays open while new ones arrive and it changes
    opened = wait_for(d, "a delivery", lambda: css(d, "#delivery-log details"))[0]
    opened.find_element("css selector", "summary").click()

    # the agent answers
    one(d, "#reply-text").clear()
    one(d, "#reply-text").send_keys(answer)
    one(d, "#reply-send").click()

    # the customer sees the answer with its delivery state
    entry = wait_for(
        d,
        "the answer delivered on the customer's device",
        lambda: (
            (e := customer_entry(d, channel, answer))
            and e.find_elements("css selector", delivered)
            and e
        ),
    )
    assert "mine" not in entry.get_attribute("class").split()  # received, not written
    wait_for(
        d,
        "the answer's state on the agent side",
        lambda: any(s in agent_message(d, answer).text for s in ("Sent", "Delivered", "Read")),
    )
    assert opened.get_attribute("open") is not None, "an opened delivery collapsed"
    if slug == "whatsapp":
        # the agent's read receipt reached the customer's phone: blue ticks
        wait_for(
            d,
            "read ticks on the customer's message",
            lambda: customer_entry(d, channel, question).find_elements(
                "css selector", ".ticks.read"
            ),
        )
    if slug == "whatsapp":
        # the agent sends a picture: it reaches the phone as media
        one(d, "#reply-file").send_keys(str(picture))
        one(d, "#reply-send").click()
        wait_for(
            d,
            "the agent's picture on the customer's phone",
            lambda: [
                e
                for e in css(d, f"#device-{channel} .thread li.bubble:not(.mine)")
                if e.find_elements("css selector", "img")
            ],
        )
    save_screenshot(d, f"{slug}-2-answer-delivered")

    # the agent ends it: no reply form, nothing left to end
    one(d, "#end").click()
    wait_for(
        d,
        "the conversation ended",
        lambda: "ENDED" in one(d, f'#conversations li[data-key="{key}"]').text,
    )
    wait_for(d, "the reply form hidden", lambda: not one(d, "#reply").is_displayed())
    assert not one(d, "#end").is_enabled()
    save_screenshot(d, f"{slug}-3-ended")
    assert console_errors(d) == []


def test_agent_starts_a_conversation(browser: Any, server: Server) -> None:
    d = browser
    number = "+1415555" + str(uuid.uuid4().int)[:4]
    one(d, "#start-open").click()
    dialog = one(d, "#start-dialog")
    assert dialog.is_displayed()
    for option in css(d, "#start-channel option"):
        if "sms-twilio-sandbox" in option.text:
            option.click()
    # a number the channel refuses: the channel's errorText, and the dialog stays open
    one(d, "#start-contact").send_keys("not a number")
    one(d, "#start-submit").click()
    error = wait_for(d, "the channel's refusal", lambda: one(d, "#start-error").text)
    assert "not a number" in error or "valid" in error
    assert one(d, "#start-dialog").is_displayed()
    # Chromium logs every 4xx answer as a failed load: this one, and nothing else, is expected
    refusals = console_errors(d)
    assert refusals, "the refusal was not a 4xx answer"
    assert all("/conversations/start" in e and "422" in e for e in refusals), refusals
    one(d, "#start-contact").clear()
    one(d, "#start-contact").send_keys(number)
    one(d, "#start-name").send_keys("Rosa Diaz")
    one(d, "#start-topic").send_keys("Your appointment")
    save_screenshot(d, "start-1-dialog")
    one(d, "#start-submit").click()
    wait_for(d, "the dialog closed", lambda: not one(d, "#start-dialog").is_displayed())
    assert number in one(d, "#pane-title").text
    assert one(d, "#reply").is_displayed()

    # Unblu's create_contact and create_conversation went to extmsg and were answered
    names = [x["name"] for x in server.api("/deliveries") if x["state"] == "delivered"]
    assert "outbound.external_messenger.create_contact" in names
    assert "outbound.external_messenger.create_conversation" in names

    text = "Hello Rosa, this is a reminder for tomorrow."
    one(d, "#reply-text").send_keys(text)
    one(d, "#reply-send").click()
    one(d, "#tab-sms-twilio-sandbox").click()
    entry = wait_for(
        d,
        "the agent's first message on the customer's phone",
        lambda: customer_entry(d, "sms-twilio-sandbox", text),
    )
    wait_for(d, "its delivery", lambda: entry.find_elements("css selector", ".state.delivered"))
    save_screenshot(d, "start-2-first-message-delivered")
    assert console_errors(d) == []


def test_fresh_console_is_clean(browser: Any, server: Server) -> None:
    d = browser
    d.get(f"{server.url}/sandbox/")
    wait_for(d, "live updates", lambda: "live" in one(d, "#live").text)
    wait_for(d, "the conversations", lambda: css(d, "#conversations .conv"))
    assert not one(d, "#reply").is_displayed()
    assert not one(d, "#end").is_enabled()
    # every control has an accessible name
    for control in css(d, "button, input, textarea, select"):
        if not control.is_displayed():
            continue
        name = d.execute_script(
            "const e = arguments[0];"
            "return e.getAttribute('aria-label') || (e.labels && e.labels[0] && "
            "e.labels[0].textContent.trim()) || e.textContent.trim() || e.title;",
            control,
        )
        assert name, control.get_attribute("outerHTML")
    # the outage switch is still there
    one(d, "#outage-start").click()
    wait_for(d, "the outage shown", lambda: "Unblu API down" in one(d, "#outage-state").text)
    save_screenshot(d, "console-outage")
    one(d, "#outage-stop").click()
    wait_for(d, "the outage over", lambda: not one(d, "#outage-state").text)
    with urllib.request.urlopen(f"{server.url}/favicon.ico", timeout=5) as resp:  # noqa: S310
        assert resp.status == 200
    save_screenshot(d, "console-overview")
    assert console_errors(d) == []
