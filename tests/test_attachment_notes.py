"""A contact's file that cannot be fetched: retried while it may still come, a note once not."""

from __future__ import annotations

from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from extmsg import hookimpl
from extmsg.errors import DeliveryError, FetchTooLarge, PermanentError, RetryableError
from extmsg.flows.to_unblu import _fetch_files, _size, undelivered_note
from extmsg.metrics import Metrics
from extmsg.models import Attachment, Channel, Contact, InboundMessage
from extmsg.plugins import build_hooks
from extmsg.runtime import Runtime

from .conftest import make_channel


class Provider:
    """Answers each fetch with the next of ``outcomes`` (bytes, or an error to raise)."""

    def __init__(self, *outcomes: bytes | DeliveryError) -> None:
        self.outcomes = list(outcomes)

    @hookimpl
    def extmsg_fetch_attachment(
        self, channel: Channel, attachment: Attachment
    ) -> Awaitable[Attachment] | None:
        async def fetch() -> Attachment:
            outcome = self.outcomes.pop(0)
            if isinstance(outcome, DeliveryError):
                raise outcome
            return Attachment(attachment.file_name, attachment.mime_type, data=outcome)

        return fetch()


def _message(text: str | None, *files: Attachment) -> InboundMessage:
    return InboundMessage("wamid.1", Contact("41791234567"), text=text, attachments=files)


PHOTO = Attachment("photo.jpg", "image/jpeg", url="media:1", caption="the meter")
FORM = Attachment("form.pdf", "application/pdf", url="media:2")


async def _files(provider: Provider, message: InboundMessage) -> list[Attachment | str]:
    hooks = build_hooks(entry_points=False, extra=[provider], disabled=())
    runtime = cast("Runtime", SimpleNamespace(hooks=hooks, metrics=Metrics()))
    channel: Any = make_channel()
    return await _fetch_files(runtime, channel, message)


async def test_a_file_gone_for_good_becomes_a_note_in_its_place() -> None:
    too_large = FetchTooLarge("1 GB is more than allowed", limit=16 * 1024 * 1024, size=10**9)
    note, form = await _files(Provider(too_large, b"%PDF"), _message("Both", PHOTO, FORM))
    assert note == (
        "the meter\n[Attachment photo.jpg could not be delivered: the file is larger than 16 MB]"
    )
    assert isinstance(form, Attachment)
    assert (form.file_name, form.data) == ("form.pdf", b"%PDF")


async def test_a_caption_that_is_the_text_is_not_repeated() -> None:
    photo = Attachment("photo.jpg", "image/jpeg", url="media:1", caption="Look")
    [note] = await _files(Provider(PermanentError("Gone", status=404)), _message("Look", photo))
    assert note == "[Attachment photo.jpg could not be delivered: gone]"


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("Twilio could not serve the file right now", status=503),
        PermanentError("Twilio refused to hand out the file. Check the auth token.", status=401),
    ],
    ids=["retryable", "credentials"],
)
async def test_a_fetch_that_may_work_later_fails_the_job(error: DeliveryError) -> None:
    """Retried by the engine (or by hand once the credentials are fixed), not given up."""
    with pytest.raises(DeliveryError) as raised:
        await _files(Provider(error), _message("Look", PHOTO))
    assert raised.value is error


def test_the_note_reads_like_a_sentence() -> None:
    assert undelivered_note("a.png", "WhatsApp forgot it.") == (
        "[Attachment a.png could not be delivered: WhatsApp forgot it]"
    )
    assert _size(1536 * 1024) == "1.5 MB"
    assert _size(500 * 1024) == "500 KB"
    assert undelivered_note("my\nfile.txt", "The file\n is gone.") == (
        "[Attachment my file.txt could not be delivered: the file is gone]"
    )
