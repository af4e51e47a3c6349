"""Error classification (Graph API answers → retryable or permanent, with a readable reason)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from whatsapp_testkit import MAIN_NUMBER_ID, case_ids, load_cases, make_channel

from extmsg.errors import RetryableError
from extmsg.plugins import Hooks
from extmsg_whatsapp import errors
from extmsg_whatsapp.contact import validate_contact

CASES = load_cases("errors.json")
CONTACTS = load_cases("validate_contact.json")


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
async def test_graph_errors(hooks: Hooks, case: dict[str, Any]) -> None:
    retry_after = float(case["retry_after"]) if "retry_after" in case else None
    error = errors.from_response(case["status"], case["body"], retry_after=retry_after)
    expected = case["expect"]
    assert error.retryable is expected["retryable"]
    assert error.code == expected["code"]
    assert error.status == case["status"]
    assert expected["contains"] in error.message
    # the core's classifier reads the verdict straight from the error
    verdict = await hooks.classify_error(make_channel("wa-main", MAIN_NUMBER_ID), error)
    assert verdict.retryable is expected["retryable"]
    assert verdict.retry_after == expected.get("retry_after")


@pytest.mark.parametrize(
    "exc", [aiohttp.ClientConnectionError("refused"), TimeoutError(), ConnectionResetError()]
)
def test_network_errors_are_retryable(exc: BaseException) -> None:
    error = errors.network_error(exc)
    assert isinstance(error, RetryableError)
    assert "Could not reach WhatsApp" in error.message


def test_status_errors_use_the_same_texts() -> None:
    code, text = errors.from_status_errors(
        [
            {
                "code": 131047,
                "title": "Re-engagement message",
                "error_data": {"details": "Message failed to send because more than 24 hours"},
            }
        ]
    )
    assert code == "131047"
    assert text == errors.CODES[131047][1]
    assert errors.from_status_errors([]) == (None, None)
    assert errors.from_status_errors("nonsense") == (None, None)


def test_every_text_reads_as_a_sentence() -> None:
    for code in errors.CODES:
        _, text = errors.describe(code)
        assert text[0].isupper(), code
        assert text.endswith("."), code


@pytest.mark.parametrize("case", CONTACTS, ids=case_ids(CONTACTS))
async def test_validate_contact(hooks: Hooks, case: dict[str, Any]) -> None:
    check = await hooks.validate_contact(make_channel("wa-main", MAIN_NUMBER_ID), case["input"])
    assert check.valid is case["expect"]["valid"]
    if check.valid:
        assert check.address == case["expect"]["address"]
    else:
        assert check.error
    assert validate_contact(case["input"]) == check
