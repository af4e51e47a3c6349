"""What reaches a log: masks that keep ids readable and take linear time on any input, and
control characters escaped so that no value writes a line of its own."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import pytest

from extmsg import logsafe
from extmsg.logsafe import (
    EscapeControlChars,
    escape_control,
    install_log_escaping,
    mask,
    mask_address,
)
from extmsg.rendering import split_text
from extmsg.testing.helpers import cpu_time

MB = 1_000_000

#: Inputs that made the old patterns try every start position (a million characters each).
HOSTILE = {
    "letters": "a" * MB,
    "sid": "SM" + "0123456789" * (MB // 10),
    "at then digits": "a@" + "1" * MB,
    "many ats": "a@" * (MB // 2),
    "dotted domain": "a@" + "b." * (MB // 2),
    "dots then at": "a" + "." * MB + "@x.com",
    "digit then spaces": "1" + " " * MB,
    "spaced digits": "1 " * (MB // 2),
    "digits then letter": "1" * MB + "a",
    "addresses": "anna@ex.com " * (MB // 12),
    "numbers": "+41791234567 " * (MB // 13),
}


def timed(call: Callable[[], object]) -> float:
    """The CPU seconds ``call`` takes: unlike wall time, not stretched by a loaded machine."""
    with cpu_time(this_thread=True) as took:
        call()
    return took.seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("twilio/status:SM0123456789abcdef0123456789abcdef", None),
        ("wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjVFQzlGRTQ1Nzk4Njc1MwA=", None),
        ("job for SM1234567890 failed", None),
        ("call +41 79 123 45 67 now", "call +** ** *** ** 67 now"),
        ("whatsapp/41791234567", "whatsapp/*********67"),
        ("from jane.doe@example.org (SM123456789)", "from j***@example.org (SM123456789)"),
    ],
)
def test_ids_with_digits_stay_readable_numbers_and_addresses_do_not(
    text: str, expected: str | None
) -> None:
    assert mask(text) == (text if expected is None else expected)


@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_masking_is_linear_on_hostile_text(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the cut, so that the patterns themselves are what is measured.
    monkeypatch.setattr(logsafe, "MASK_LIMIT", 10 * MB)
    text = HOSTILE[shape]
    assert timed(lambda: mask(text)) < 1.0


def test_mask_cuts_long_text_and_counts_the_rest() -> None:
    masked = mask("x" * MB)
    shown, _, rest = masked.partition("…[+")
    assert shown == "x" * len(shown)
    assert len(shown) > 1000
    assert rest == f"{MB - len(shown)} chars]"
    assert len(masked) < logsafe.MASK_LIMIT + 100


def test_a_cut_never_shows_half_a_number_or_address() -> None:
    for offset in range(30):
        text = "a" * (logsafe.MASK_LIMIT - offset) + " +41791234567 anna.meier@example.org"
        masked = mask(text)
        assert "41791" not in masked
        assert "anna" not in masked
        assert "meier" not in masked


def test_mask_address_is_short_whatever_it_is_given() -> None:
    assert mask_address("+41791234567") == "+417******67"
    assert mask_address("whatsapp:+41791234567") == "whatsapp:+417******67"
    assert mask_address("jane.doe@example.org") == "j…e@example.org"
    for address in ("a" * MB + "@example.org", "jane@" + "d" * MB, "x" * MB + ":+4179", "1" * MB):
        with cpu_time(this_thread=True) as took:
            shown = mask_address(address)
        assert took.seconds < 1.0
        assert len(shown) < 200


def test_escape_control_keeps_a_value_on_one_line() -> None:
    text = "a\nb\rc\td\x1b[31me\x00f\x7fg\x85h\u2028i\u2029j"
    escaped = escape_control(text)
    assert escaped == "a\\nb\\rc\\td\\x1b[31me\\x00f\\x7fg\\x85h\\u2028i\\u2029j"
    assert len(escaped.splitlines()) == 1
    plain = "Grüezi, 你好 \\n 😀"
    assert escape_control(plain) is plain
    assert timed(lambda: escape_control("\n" * MB)) < 1.0


def capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s %(ref)s"))
    install_log_escaping(handler)
    install_log_escaping(handler)  # once is enough
    assert sum(isinstance(f, EscapeControlChars) for f in handler.filters) == 1
    logger = logging.getLogger("extmsg.tests.logsafe")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_the_filter_escapes_messages_arguments_and_extra_fields() -> None:
    logger, out = capture()
    logger.info("sid %s", "SM1\nERROR forged", extra={"ref": "r\r\nERROR forged too"})
    logger.info("plain %s", "SM2", extra={"ref": "r2"})
    assert out.getvalue().splitlines() == [
        "INFO sid SM1\\nERROR forged r\\r\\nERROR forged too",
        "INFO plain SM2 r2",
    ]


def test_a_traceback_keeps_its_lines_but_not_the_messages_newlines() -> None:
    logger, out = capture()
    try:
        try:
            raise KeyError("inner\nERROR forged by the cause")
        except KeyError as exc:
            raise ValueError("bad sid SM1\nERROR forged") from exc
    except ValueError:
        logger.exception("job failed", extra={"ref": "-"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "ERROR job failed -"
    assert lines[1] == "Traceback (most recent call last):"
    assert "ValueError: bad sid SM1\\nERROR forged" in lines
    assert "KeyError: 'inner\\nERROR forged by the cause'" in lines
    assert not [line for line in lines if line.startswith("ERROR forged")]


def test_a_record_without_control_characters_keeps_its_arguments() -> None:
    record = logging.LogRecord("extmsg", logging.INFO, __file__, 1, "sent %s", ("SM1",), None)
    assert EscapeControlChars().filter(record)
    assert (record.msg, record.args) == ("sent %s", ("SM1",))


def test_split_text_is_linear() -> None:
    for text in ("word " * 600_000, "x" * 3 * MB, " " * 3 * MB, "a\t" * (3 * MB // 2)):
        assert timed(lambda text=text: split_text(text, 1600)) < 1.0  # type: ignore[misc]
    assert split_text("one two three", 7) == ["one two", "three"]
