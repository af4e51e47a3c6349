"""Smaller pieces: tokens and Message-IDs, subjects, HTML to text, quotes, charsets, odd mail."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from email_testkit import SECRET, channel

from extmsg.models import InboundMessage, StatusUpdate
from extmsg.testing.helpers import cpu_time
from extmsg_email_smtp import addresses, classify, htmltext, imap_in, parse, quotes, threads
from extmsg_email_smtp.inbound import events_for


# -- threads -------------------------------------------------------------------------------------
def test_token_is_bound_to_contact_and_secret() -> None:
    token = threads.new_token(SECRET, "Jane@Example.org", "<seed@x>")
    assert threads.is_token(token)
    assert token == threads.new_token(SECRET, "jane@example.org", "<seed@x>")  # deterministic
    assert token != threads.new_token(SECRET, "jane@example.org", "<other@x>")
    assert threads.verify_token(SECRET, token, "jane@example.org")
    assert not threads.verify_token(SECRET, token, "eve@example.org")
    assert not threads.verify_token("another-secret", token, "jane@example.org")
    assert not threads.verify_token(SECRET, "t" + "a" * 16, "jane@example.org")


def test_message_ids_and_reply_to() -> None:
    token = threads.new_token(SECRET, "jane@example.org", "s")
    mid = threads.make_message_id(token, "01HZ/x y", "acme.example")
    assert mid == f"<extmsg.{token}.01HZ-x-y@acme.example>"
    assert threads.message_id_token(mid) == token
    assert threads.make_message_id("jane@example.org", "1", "acme.example") == (
        "<extmsg.c.1@acme.example>"
    )
    assert threads.message_id_token("<extmsg.c.1@acme.example>") == "c"
    assert threads.message_id_token("<CAK123@mail.gmail.com>") is None
    assert threads.reply_to_address("support@acme.example", token, True) == (
        f"support+{token}@acme.example"
    )
    assert threads.reply_to_address("support@acme.example", token, False) == (
        "support@acme.example"
    )
    assert threads.reply_to_address("support@acme.example", "jane@example.org", True) == (
        "support@acme.example"
    )
    assert threads.split_message_ids("<a@x>\r\n <b@y> junk <c@z>") == ["<a@x>", "<b@y>", "<c@z>"]


@pytest.mark.parametrize(
    ("subject", "clean", "forward"),
    [
        ("Re: RE: AW: Order 1234", "Order 1234", False),
        ("Fwd: Re: Invoice", "Invoice", True),
        ("WG: Rechnung", "Rechnung", True),
        ("TR: Facture", "Facture", True),
        ("Re[2]: Hello", "Hello", False),
        ("Reply needed: contract", "Reply needed: contract", False),
        ("  Multiple\r\n   spaces ", "Multiple spaces", False),
    ],
)
def test_subjects(subject: str, clean: str, forward: bool) -> None:
    assert threads.clean_subject(subject) == clean
    assert threads.is_forward(subject) is forward


def test_resolution_order() -> None:
    jane = "jane@example.org"
    token = threads.new_token(SECRET, jane, "s1")
    other = threads.new_token(SECRET, jane, "s2")
    common = {"secret": SECRET, "contact": jane, "message_id": "<m@x>"}
    # 1. the recipient's token wins over References
    got = threads.resolve_thread(
        **common, recipients=[f"support+{token}@acme.example"], in_reply_to=[],
        references=[f"<extmsg.{other}.1@acme.example>"], new_mail_rule="same",
    )  # fmt: skip
    assert got == (token, "recipient")
    # 2. In-Reply-To before References; References newest first
    got = threads.resolve_thread(
        **common, recipients=[], in_reply_to=[],
        references=[f"<extmsg.{token}.1@acme.example>", f"<extmsg.{other}.2@acme.example>"],
        new_mail_rule="same",
    )  # fmt: skip
    assert got == (other, "message-id")
    # 3. a Message-ID this process saw
    book = threads.ThreadBook()
    book.record_inbound(token, "<first@example.org>", "Subject")
    got = threads.resolve_thread(
        **common, recipients=[], in_reply_to=["<first@example.org>"], references=[],
        new_mail_rule="new", book=book,
    )  # fmt: skip
    assert got == (token, "seen-message-id")
    # 4. foreign references → the contact; 5. no references → the rule
    got = threads.resolve_thread(
        **common, recipients=[], in_reply_to=["<unknown@x>"], references=[], new_mail_rule="new"
    )
    assert got == (jane, "contact")
    got = threads.resolve_thread(
        **common, recipients=[], in_reply_to=[], references=[], new_mail_rule="new"
    )
    assert got == (threads.new_token(SECRET, jane, "<m@x>"), "new")


def test_thread_book_is_bounded() -> None:
    book = threads.ThreadBook(max_threads=2, max_ids=3)
    for i in range(5):
        book.record_inbound(f"t{i}", f"<{i}@x>", f"S{i}")
    assert book.get("t0") is None
    assert book.get("t4") is not None
    assert book.thread_of("<1@x>") is None
    assert book.thread_of("<4@X>") == "t4"
    for i in range(20):
        book.record_outbound("t4", f"<o{i}@x>", "")
    info = book.get("t4")
    assert info is not None
    assert len(info.references) == threads.ThreadBook.MAX_REFERENCES
    assert info.subject == "S4"


# -- addresses -----------------------------------------------------------------------------------
def test_addresses() -> None:
    assert addresses.recipient_matches("Support+tabc@ACME.example", "support@acme.example", [])
    assert addresses.recipient_matches(
        "x@team.acme.example", "s@acme.example", ["@team.acme.example"]
    )
    assert not addresses.recipient_matches(
        "x@acme.example", "s@acme.example", ["@team.acme.example"]
    )
    assert addresses.mask("jane.doe@example.org") == "j…e@example.org"
    assert addresses.mask("jo@example.org") == "…@example.org"
    assert addresses.mask(None) == "-"
    assert addresses.is_valid("a@localhost")
    assert not addresses.is_valid("a b@example.org")


# -- HTML and quotes -----------------------------------------------------------------------------
def test_html_to_text() -> None:
    html = (
        "<p>One&nbsp;two</p><p>Three<br>four</p><ol><li>first</li><li>second</li></ol>"
        "<table><tr><td>A</td><td>B</td></tr></table><pre>  code\n  block</pre>"
        "<blockquote><p>quoted</p><blockquote>deeper</blockquote></blockquote>"
        '<a href="https://x.example/a">https://x.example/a</a> '
        '<a href="mailto:a@b.example">mail</a>'
        "<img alt='logo' src='cid:1'><span style='display:none'>hidden</span><div>unclosed"
    )
    assert htmltext.html_to_text(html) == (
        "One two\n\nThree\nfour\n\n1. first\n2. second\nA  B\n\n  code\n  block\n\n"
        "> quoted\n>\n>> deeper\n\nhttps://x.example/a mail (a@b.example)[logo]\nunclosed"
    )
    assert htmltext.html_to_text("<p>broken <b>markup</p></i></div>") == "broken markup"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # French Gmail attribution
        ("Merci !\n\nLe lun. 3 juin 2024 à 10:15, Acme <s@acme.example> a écrit :\n> Bonjour",
         "Merci !"),
        # German Outlook block
        ("Danke.\n\nVon: Acme <s@acme.example>\nGesendet: Montag, 3. Juni 2024 10:15\n"
         "An: Max\nBetreff: AW: Test\n\nHallo", "Danke."),
        # "-----Original Message-----"
        ("Fine.\n\n-----Original Message-----\nFrom: a\nSent: b\n\nold", "Fine."),
        # bottom quote without an attribution line, then a mobile signature
        ("Yes.\n\n> earlier\n> text\n", "Yes."),
        ("Ok, do it.\n\nVon meinem iPhone gesendet", "Ok, do it."),
        # a hyphen list is content, not a signature; "Thanks," mid-text is content too
        ("Items:\n- one\n- two\nThanks, and also:\nmore",
         "Items:\n- one\n- two\nThanks, and also:\nmore"),
        # only history: nothing new
        ("On Mon, Jun 3, 2024 at 10:15 AM X <x@y.example> wrote:\n> hi", ""),
        # bottom post: attribution and quote first, the answer below
        ("Am 03.06.24 um 13:10 schrieb Anna:\n> Hallo\n>\n> Gruss\n\nDanke, erledigt.",
         "Danke, erledigt."),
        # interleaved, the attribution wrapped by the client, the quote deeper than one level
        ("On Mon, 3 Jun 2024, Anna <\nanna@acme.example> wrote:\n> A?\n>> old\nYes.\n> B?\nNo.",
         "Yes.\n\nNo."),
        # the sender's own line ending in ":" above a quote is theirs, digits or not
        ("My answers to your 3 questions:\n> 1. When?\nMonday.",
         "My answers to your 3 questions:\n\nMonday."),
        # a line ending in ":" above a quote is the sender's text unless it reads like one
        ("Here is what you asked:\n> the price?\nIt is 5.", "Here is what you asked:\n\nIt is 5."),
        # a top post keeps working: the answer, the attribution and quote below
        ("Sure.\n\nOn Tue, Jun 4, 2024 at 9:00 AM Anna <a@acme.example> wrote:\n\n> Ok?\n>\n",
         "Sure."),
    ],
)  # fmt: skip
def test_extract_reply(text: str, expected: str) -> None:
    assert quotes.extract_reply(text, ["en", "de", "fr"]) == expected


@pytest.mark.parametrize(
    "body",
    [
        "> " + "a" * 1_000_000,  # one huge quoted line
        "On 1 wrote:\n> q\n" * 65_000,  # attribution after attribution
        "x:\n" * 340_000,  # lines that end like attributions, and no quote
        ("On 1 2 3 " * 120_000) + "wrote:\n> q\nanswer",  # an attribution too long to be one
        "a\n>\n" * 250_000,  # interleaved as far as it goes
        "von meinem " + "x" * 1_000_000,  # the mobile signature's pattern on its longest line
    ],
    ids=["long-line", "attributions", "colons", "long-attribution", "interleaved", "mobile"],
)
def test_extracting_a_reply_is_linear_on_hostile_bodies(body: str) -> None:
    assert len(body) >= 1_000_000
    # CPU time, not wall time: a loaded machine stretches the latter whatever the work.
    with cpu_time(this_thread=True) as took:
        quotes.extract_reply(body, ["en", "de", "fr"])
    assert took.seconds < 1.0  # 0.1-0.2 s
    # The whole mail, with the standard library's MIME parsing (itself ~0.2-0.4 s).
    raw = _mail(body.replace("\n", "\r\n").encode(), **{"In-Reply-To": "<a@b>"})
    with cpu_time(this_thread=True) as took:
        parse.parse_mail(raw, channel().settings)
    assert took.seconds < 3.0


@pytest.mark.parametrize(
    "html",
    [
        "<blockquote type=cite>q " * 40_000 + "<p>answer</p>",  # nested quotes never closed
        "<div>" * 80_000 + "</span>" * 80_000,  # stray end tags below a deep stack
    ],
    ids=["nested-quotes", "stray-end-tags"],
)
def test_html_to_text_is_linear_on_hostile_markup(html: str) -> None:
    assert len(html) >= 900_000
    with cpu_time(this_thread=True) as took:
        text = htmltext.html_to_text(html)
    assert took.seconds < 3.0  # 0.5-0.9 s of CPU; was minutes
    assert len(text) < 4 * len(html)
    assert text.endswith("answer") if "answer" in html else text == ""


# -- parse: charsets, structure, odd mail ---------------------------------------------------------
def _mail(body: bytes, ctype: str = "text/plain; charset=utf-8", **headers: str) -> bytes:
    head = {
        "From": "Jane <jane@example.org>",
        "To": "support@acme.example",
        "Subject": "Hello",
        "Message-ID": "<m1@example.org>",
        "Content-Type": ctype,
        **headers,
    }
    lines = [f"{k}: {v}" for k, v in head.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_decode_text() -> None:
    assert parse.decode_text("é".encode(), None) == "é"
    assert parse.decode_text(b"\xe9", "us-ascii") == "é"
    assert parse.decode_text(b"\x80", "ISO-8859-1") == "€"
    assert parse.decode_text("ü".encode("cp850"), "cp850") == "ü"
    assert parse.decode_text("ü".encode(), "x-no-such-charset") == "ü"
    assert parse.decode_text(b"\xfc", "x-no-such-charset") == "ü"


def test_format_flowed() -> None:
    raw = _mail(
        b"This is a long \r\nline that was \r\nwrapped.\r\n\r\n-- \r\nJane\r\n",
        "text/plain; charset=utf-8; format=flowed",
    )
    parsed = parse.parse_mail(raw, channel().settings)
    assert parsed.text == "This is a long line that was wrapped."
    raw = _mail(b"Del\r\nsp.\r\n", "text/plain; charset=utf-8; format=flowed; delsp=yes")
    raw = raw.replace(b"Del\r\n", b"Del \r\n")
    assert parse.parse_mail(raw, channel().settings).text == "Delsp."


def test_missing_message_id_is_stable() -> None:
    raw = _mail(b"hi\r\n", **{"Message-ID": ""})
    first = parse.parse_mail(raw, channel().settings).message_id
    assert first == parse.parse_mail(raw, channel().settings).message_id
    assert first.endswith("@extmsg.invalid>")


def test_attached_mail_and_unnamed_parts() -> None:
    inner = EmailMessage()
    inner["Subject"] = "Original: offer"
    inner["From"] = "x@y.example"
    inner.set_content("the offer")
    outer = EmailMessage()
    outer["From"] = "Jane <jane@example.org>"
    outer["To"] = "support@acme.example"
    outer["Subject"] = "see attached"
    outer["Message-ID"] = "<m2@example.org>"
    outer.set_content("See the attached mail.")
    outer.add_attachment(inner)
    outer.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream")
    parsed = parse.parse_mail(outer.as_bytes(), channel().settings)
    assert [(a.file_name, a.mime_type) for a in parsed.attachments] == [
        ("Original_ offer.eml", "message/rfc822"),
        ("attachment-2.bin", "application/octet-stream"),
    ]
    assert parsed.text == "See the attached mail."


def test_only_quoted_history_falls_back_to_whole_text() -> None:
    raw = _mail(b"On Mon, Jun 3, 2024 at 10:15 AM X <x@y.example> wrote:\r\n> hi\r\n",
                **{"In-Reply-To": "<a@b>"})  # fmt: skip
    [event], _, _ = events_for(channel(), parse.parse_mail(raw, channel().settings))
    assert isinstance(event, InboundMessage)
    assert event.text is not None
    assert "> hi" in event.text


@pytest.mark.parametrize(
    ("rule", "refs", "expected"),
    [("always", "<a@b>", "Subject: Hello\n\nhi"), ("never", "", "hi"), ("new", "<a@b>", "hi")],
)
def test_subject_in_text(rule: str, refs: str, expected: str) -> None:
    ch = channel(subject_in_text=rule)
    raw = _mail(b"hi\r\n", **{"In-Reply-To": refs})
    [event], _, _ = events_for(ch, parse.parse_mail(raw, ch.settings))
    assert isinstance(event, InboundMessage)
    assert event.text == expected


def test_empty_mail_with_subject_and_nothing_at_all() -> None:
    ch = channel(subject_in_text="never")
    [event], _, _ = events_for(ch, parse.parse_mail(_mail(b""), ch.settings))
    assert isinstance(event, InboundMessage)
    assert event.text == "Hello"
    events, why, _ = events_for(ch, parse.parse_mail(_mail(b"", Subject=""), ch.settings))
    assert events == []
    assert "empty" in why


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"Auto-Submitted": "no"}, "message"),
        ({"Auto-Submitted": "auto-generated"}, "auto-reply"),
        ({"X-Autoreply": "no"}, "message"),
        ({"Precedence": "junk"}, "bulk"),
        ({"Precedence": "first-class"}, "message"),
        ({"From": "No Reply <no-reply@shop.example>"}, "auto-reply"),
        ({"From": "postmaster@example.org"}, "bounce"),
        ({"X-Failed-Recipients": "gone@example.org"}, "bounce"),
        ({"Subject": "Out of Office: back Monday"}, "auto-reply"),
        ({"From": "Acme <support+tabc@acme.example>"}, "loop"),
    ],
)
def test_classify(headers: dict[str, str], kind: str) -> None:
    raw = _mail(b"text\r\n", **headers)
    assert parse.parse_mail(raw, channel().settings).verdict.kind == kind


def test_bounce_without_report_names_our_message() -> None:
    body = b"Your message could not be delivered.\r\n\r\nMessage-ID: <extmsg.c.42@acme.example>\r\n"
    raw = _mail(body, **{"X-Failed-Recipients": "gone@example.org", "From": "MAILER-DAEMON@mx.x"})
    [event], _, _ = events_for(channel(), parse.parse_mail(raw, channel().settings))
    assert isinstance(event, StatusUpdate)
    assert event.provider_message_id == "<extmsg.c.42@acme.example>"
    assert event.error_text == "The email to gone@example.org could not be delivered."


def test_bounce_text_without_diagnostic() -> None:
    bounce = classify.Bounce(original_message_id="<x>", failed=True, status="5.2.2")
    assert bounce.error_text() == (
        "The email could not be delivered: the mailbox is full. (status 5.2.2)"
    )


def test_imap_folder_encoding() -> None:
    assert imap_in.encode_folder("INBOX") == '"INBOX"'
    assert imap_in.encode_folder("Verarbeitet/Älter") == '"Verarbeitet/&AMQ-lter"'
    assert imap_in.encode_folder('A&B "x"') == '"A&-B \\"x\\""'


def _nested(depth: int) -> bytes:
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
    )
    closing = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    head = b"From: Ann <ann@example.org>\nTo: support@example.com\nMessage-ID: <n@example.org>\n"
    return head + opening + b"Content-Type: text/plain\n\nhello" + closing


def test_a_mail_nested_deeper_than_any_real_one_is_refused_unread() -> None:
    # Parsing costs grow with the square of the nesting: 850 levels took seconds.
    assert parse.parse_mail(_nested(20), channel().settings).text == "hello"
    with (
        cpu_time(this_thread=True) as took,
        pytest.raises(ValueError, match="more than 100 multipart sections"),
    ):
        parse.parse_mail(_nested(5000), channel().settings)
    assert took.seconds < 0.5
