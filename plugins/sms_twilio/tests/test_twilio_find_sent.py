"""``extmsg_find_sent`` for Twilio: what counts as "Twilio already has this part", over real
HTTP against the fake's Messages list (filters, paging, response shape)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from twilio_testkit import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, case_params, make_channel

from extmsg.errors import PermanentError, RetryableError
from extmsg.models import Attachment, Contact, OutboundMessage, SendResult
from extmsg.plugins import Hooks
from extmsg_sms_twilio import lookup
from extmsg_sms_twilio.fake import FakeTwilio
from extmsg_sms_twilio.session import basic_auth

FakeServer = tuple[TestServer, FakeTwilio]

#: When extmsg accepted the agent's message in these tests: a while ago, so that history can
#: lie on either side of it.
ACCEPTED = time.time() - 3600


def _rfc2822(at: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(at))


async def _seed(api: str, fake: FakeTwilio, entry: dict[str, Any]) -> str:
    """Create a message at the fake as Twilio would have it, dated relative to ACCEPTED."""
    form = [("To", entry["to"]), ("Body", entry["body"])]
    if "service" in entry:
        form.append(("MessagingServiceSid", entry["service"]))
    else:
        form.append(("From", entry.get("from", FROM_NUMBER)))
    if "media" in entry:
        form.append(("MediaUrl", entry["media"]))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{api}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            data=form,
            headers={"Authorization": basic_auth(ACCOUNT_SID, AUTH_TOKEN)},
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()
    record = fake.messages[-1]
    created = ACCEPTED - entry["age"]
    record.update(created_at=created, date_created=_rfc2822(created))
    if entry["sent"]:
        record.update(sent_at=created + 1, date_sent=_rfc2822(created + 1), status="sent")
    return str(record["sid"])


def _message(spec: dict[str, Any]) -> OutboundMessage:
    attachment = spec.get("attachment")
    return OutboundMessage(
        id="msg-01J0DOUBT",
        unblu_message_id="u-1",
        conversation_id="c-1",
        contact=Contact(address=spec["to"]),
        text=spec.get("text"),
        attachment=msgspec.convert(attachment, Attachment) if attachment else None,
        part=spec.get("part", 0),
        accepted_at=spec.get("accepted_at", ACCEPTED),
    )


@case_params("find_sent")
async def test_find_sent(hooks: Hooks, twilio_fake: FakeServer, case: dict[str, Any]) -> None:
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    sids = [await _seed(api, fake, entry) for entry in case["history"]]
    channel = make_channel({"api_base_url": api, **case.get("settings", {})})
    found = await hooks.find_sent(channel, _message(case["message"]))
    expect: str = case["expect"]
    if expect.startswith("found:"):
        assert isinstance(found, SendResult)
        assert found.provider_message_id == sids[int(expect.removeprefix("found:"))]
    elif expect == "not_found":
        assert found is False
    else:
        assert found is None
    assert len(fake.messages) == len(sids)  # a lookup never sends


async def test_find_sent_follows_next_page_uri(
    hooks: Hooks, twilio_fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookup, "PAGE_SIZE", 2)
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    to = "+14155550123"
    ours = await _seed(api, fake, {"to": to, "body": "Ours", "age": -1, "sent": True})
    for n in range(4):  # newer messages push ours to the third page
        await _seed(api, fake, {"to": to, "body": f"later {n}", "age": -10 - n, "sent": True})
    found = await hooks.find_sent(
        make_channel({"api_base_url": api}), _message({"to": to, "text": "Ours"})
    )
    assert isinstance(found, SendResult)
    assert found.provider_message_id == ours


async def test_find_sent_cannot_tell_when_the_pages_run_out(
    hooks: Hooks, twilio_fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lookup, "PAGE_SIZE", 2)
    monkeypatch.setattr(lookup, "MAX_PAGES", 2)
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    to = "+14155550123"
    for n in range(5):
        await _seed(api, fake, {"to": to, "body": f"other {n}", "age": -n, "sent": True})
    message = _message({"to": to, "text": "Ours"})
    assert await hooks.find_sent(make_channel({"api_base_url": api}), message) is None


async def test_find_sent_follows_only_paths_on_the_api(
    hooks: Hooks, twilio_fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A next page elsewhere is not followed (the credentials stay with Twilio's API)."""
    monkeypatch.setattr(lookup, "PAGE_SIZE", 1)
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    to = "+14155550123"
    await _seed(api, fake, {"to": to, "body": "Ours", "age": -1, "sent": True})
    await _seed(api, fake, {"to": to, "body": "later", "age": -2, "sent": True})
    real_page = lookup._page
    asked: list[str] = []

    async def elsewhere(session: Any, settings: Any, url: str) -> Any:
        asked.append(url)
        page = await real_page(session, settings, url)
        page.next_page_uri = "https://elsewhere.example" + (page.next_page_uri or "")
        return page

    monkeypatch.setattr(lookup, "_page", elsewhere)
    channel = make_channel({"api_base_url": api})
    assert await hooks.find_sent(channel, _message({"to": to, "text": "Ours"})) is None
    assert len(asked) == 1


async def test_find_sent_when_twilio_is_unreachable_retries_the_job(
    hooks: Hooks, closed_port_url: str
) -> None:
    """Documented: the core retries the job later, still in doubt, and sends nothing now."""
    channel = make_channel({"api_base_url": closed_port_url, "timeout": 2.0})
    with pytest.raises(RetryableError, match="Could not reach Twilio to look the message up"):
        await hooks.find_sent(channel, _message({"to": "+14155550123", "text": "Hi"}))


async def test_find_sent_refused_lookup_is_permanent(hooks: Hooks, twilio_fake: FakeServer) -> None:
    """Credentials Twilio refuses: the core sends and counts the possible double."""
    server, _ = twilio_fake
    channel = make_channel(
        {"api_base_url": str(server.make_url("")).rstrip("/"), "auth_token": "not-the-token"}
    )
    with pytest.raises(PermanentError):
        await hooks.find_sent(channel, _message({"to": "+14155550123", "text": "Hi"}))


async def test_find_sent_declines_other_messengers(hooks: Hooks) -> None:
    from extmsg.models import Channel

    other = Channel(name="x", messenger="other", settings=None, public_url="", webhook_secret="s")
    assert await hooks.find_sent(other, _message({"to": "+14155550123", "text": "Hi"})) is None


# --- the fake's list resource ------------------------------------------------------------------
async def _list(api: str, query: str, token: str = AUTH_TOKEN) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{api}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?{query}",
            headers={"Authorization": basic_auth(ACCOUNT_SID, token)},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_fake_list_filters_pages_and_shape(twilio_fake: FakeServer) -> None:
    server, fake = twilio_fake
    fake.callbacks_enabled = False
    api = str(server.make_url("")).rstrip("/")
    a = "+14155550123"
    old = await _seed(api, fake, {"to": a, "body": "old", "age": 86400 * 3, "sent": True})
    new = await _seed(api, fake, {"to": a, "body": "new", "age": -1, "sent": True})
    queued = await _seed(api, fake, {"to": a, "body": "queued", "age": -2, "sent": False})
    await _seed(api, fake, {"to": "+14155550999", "body": "else", "age": -1, "sent": True})

    status, page = await _list(api, f"To=%2B{a[1:]}&PageSize=2")
    assert status == 200
    assert [m["sid"] for m in page["messages"]] == [queued, new]  # newest first, queued on top
    assert set(page) >= {"first_page_uri", "next_page_uri", "page", "page_size", "uri", "start"}
    assert (page["page"], page["page_size"], page["start"]) == (0, 2, 0)
    assert "PageToken=PA" in page["next_page_uri"]
    assert "status_callback" not in page["messages"][0]  # Twilio does not return it
    status, rest = await _list(api, page["next_page_uri"].partition("?")[2])
    assert [m["sid"] for m in rest["messages"]] == [old]
    assert rest["next_page_uri"] is None

    day = time.strftime("%Y-%m-%d", time.gmtime(ACCEPTED))
    _, on_or_after = await _list(api, f"To=%2B{a[1:]}&DateSent%3E={day}")
    assert [m["sid"] for m in on_or_after["messages"]] == [new]  # not sent yet: no date_sent
    _, on_or_before = await _list(api, f"DateSent%3C={day}&From=%2B{FROM_NUMBER[1:]}")
    assert old in [m["sid"] for m in on_or_before["messages"]]
    assert (await _list(api, "DateSent=yesterday"))[0] == 400
    assert (await _list(api, "PageSize=0"))[0] == 400
    assert (await _list(api, "", token="wrong"))[0] == 401
