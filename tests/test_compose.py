"""The fast e-mail builder (`render.compose`) against the stdlib's `EmailMessage` builder it replaces on the hot path.

Both outputs are parsed with the stdlib's strict policy (a defect raises): every header and every part the old
builder made must be there with the same value, in the same order; headers byte for byte wherever the stdlib
writes them unchanged.
"""

from __future__ import annotations

import email
import email.policy
import itertools
from datetime import UTC, datetime

import pytest

from relay.mail.outbox import serialise
from relay.mail.render import Renderer, build_message, compose

STRICT = email.policy.strict
DATE = datetime(2026, 11, 24, 14, 4, tzinfo=UTC)
HOSTILE = 'Hi <script>alert("x")</script> & co\r\nsecond line 日本語\rthird العربية =?utf-8?q?x?= '

SUBJECTS = [
    "SMS reply from +33 6 12 34 56 78",
    "Re: Réunion 日本語 — العربية",
    "Hi\r\nBcc: evil@x",
    "A subject long enough to be folded by the stdlib at seventy-eight characters, surely",
    "two  spaces   inside",
    "=?utf-8?q?looks_encoded?=",
    "  leading and trailing  ",
    "",
    'STOP from +44 7400 123456 (Zoë O\'Brien, "the boss")',
]
SENDERS = ["octorelay <relay@sms.example.org>", '"Équipe, SMS" <relay@example.org>', "J. Doe <j@x.org>", "relay@x.org"]
TOS = [["ops@example.org"], ["alice@example.org", "Bob <bob@example.org>"], ["Zoë <z@example.org>", "x\r\n@y.org"]]
REPLY_TOS = [None, "+33612345678@sms.example.org", "weird name <a@b.org>", "+33612345678@sms.example.org\nBcc: evil@x"]
TEXTS = [
    "plain\n",
    "x" * 200 + "\nshort\n",
    HOSTILE,
    "emoji 😀 and a long line " + "é" * 120,
    "\n".join(f"line {i} ü" for i in range(30)),
    "",
]


def both(**kw) -> tuple[bytes, bytes]:
    kw.setdefault("date", DATE)
    kw.setdefault("message_id", "<1.abc@sms.example.org>")
    return serialise(build_message(**kw)), compose(**kw).data


def parts(data: bytes) -> tuple[email.message.EmailMessage, list[tuple[list, str]]]:
    msg = email.message_from_bytes(data, policy=STRICT)
    assert not msg.defects
    assert all(not p.defects for p in msg.walk())
    return msg, [(p.items(), p.get_content()) for p in msg.iter_parts()]


def assert_same(old: bytes, new: bytes) -> None:
    old_msg, old_parts = parts(old)
    new_msg, new_parts = parts(new)
    assert old_msg.get_content_type() == new_msg.get_content_type() == "multipart/alternative"
    old_boundary, new_boundary = old_msg.get_boundary(), new_msg.get_boundary()
    assert len(new_boundary) == len(old_boundary)
    # Every header, in order, with the same value; then the same header block byte for byte, boundary aside.
    assert [(k, str(v)) for k, v in old_msg.items()] == [
        (k, str(v).replace(new_boundary, old_boundary)) for k, v in new_msg.items()
    ]
    old_head, new_head = old.split(b"\r\n\r\n", 1)[0], new.split(b"\r\n\r\n", 1)[0]
    assert new_head.replace(new_boundary.encode(), old_boundary.encode()) == old_head
    assert old_parts == new_parts  # the same part headers (encodings included) and the same decoded text
    assert new.endswith(f"\r\n--{new_boundary}--\r\n".encode())
    assert b"\n" not in new.replace(b"\r\n", b"")  # CRLF only, as SMTP sends it
    assert all(len(line) <= 998 for line in new.split(b"\r\n"))


@pytest.mark.parametrize("subject", SUBJECTS)
def test_headers_match_the_stdlib(subject):
    for sender, to, reply_to in itertools.product(SENDERS, TOS, REPLY_TOS):
        assert_same(
            *both(sender=sender, to=to, subject=subject, text="t", html="<p>h</p>", reply_to=reply_to),
        )


def test_threading_headers_match_the_stdlib():
    long_id = "<" + "a" * 90 + "@example.org>"
    for in_reply_to, refs in [
        (None, []),
        ("<orig@example.org>", ["<root@example.org>", "<orig@example.org>"]),
        ("<a@b>\r\nBcc: evil@x", [long_id, "<b@example.org>", long_id, "not an id é"]),
    ]:
        assert_same(
            *both(
                sender=SENDERS[0],
                to=TOS[0],
                subject="Re: x",
                text="t",
                html="h",
                in_reply_to=in_reply_to,
                references=refs,
            )
        )


@pytest.mark.parametrize("text", TEXTS)
def test_parts_match_the_stdlib(text):
    assert_same(*both(sender=SENDERS[0], to=TOS[0], subject="s", text=text, html=f"<p>{text}</p>"))


def test_large_parts_are_base64_like_the_stdlib():
    text = "entry é\n" * 20_000
    assert_same(*both(sender=SENDERS[0], to=TOS[0], subject="digest", text=text, html=f"<pre>{text}</pre>"))


def test_rendered_notifications_match_the_stdlib():
    renderer = Renderer()
    event = dict(
        id=1,
        kind="reply",
        number="+33612345678",
        contact="Zoë",
        country="FR",
        country_name="France",
        local_time="2026-11-24 15:04 CET",
        text=HOSTILE,
        status="",
        answered="Meeting tomorrow at 10?",
        ticket="sms-abc123",
        reply_to="+33612345678@sms.example.org",
    )
    for kind, sub in [("reply", "ops"), ("stop", None), ("delivery", "ops")]:
        text, html = renderer.render("reply", event={**event, "kind": kind, "status": "DELIVERED"}, subscription=sub)
        assert_same(
            *both(
                sender=SENDERS[0],
                to=TOS[0],
                subject=f"SMS reply from +33 6 12 34 56 78 ({event['contact']})",
                text=text,
                html=html,
                reply_to=event["reply_to"],
            )
        )


def test_composed_reads_like_a_message():
    msg = compose(sender=SENDERS[0], to=TOS[0], subject="Re:\r\n Réunion", text="t", html="h", message_id="<x@y>\r\n")
    assert msg["Message-ID"] == "<x@y>"
    assert msg.get("Subject") == "Re: Réunion"
    assert msg.get("X-Nothing", "") == ""
    fresh = compose(sender=SENDERS[0], to=TOS[0], subject="s", text="t", html="h", message_id="")
    assert fresh["Message-ID"].startswith("<") and fresh["Message-ID"].endswith("@localhost>")
