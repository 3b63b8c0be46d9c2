"""E-mail rendering and MIME building (SPEC §4): both parts, escaping, safe headers, every template's context."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import jinja2
import pytest

from relay.mail.render import POLICY, Renderer, build_message, country_name, country_name_iso, intl, make_msgid

DOMAIN = "sms.example.org"
HOSTILE = 'Hi <script>alert("x")</script> & co\r\nsecond line 日本語\rthird العربية'


def event(**over) -> dict:
    values = dict(
        id=1,
        kind="reply",
        number="+33612345678",
        contact="Alice Martin",
        country="FR",
        country_name="France",
        local_time="2026-11-24 15:04 CET",
        text="OK, see you at 10",
        status="",
        answered="Meeting tomorrow at 10?",
        ticket="sms-abc123",
        reply_to="+33612345678@sms.example.org",
    )
    values.update(over)
    return values


def campaign(**over) -> dict:
    values = dict(
        label="Reminder",
        text="Your appointment is tomorrow ✓",
        tickets=["t-1", ""],
        contacts=60,
        sms_needed=120,
        cost=5.00502839,
        residual_credit=94.995,
        encoding="UCS-2",
        unicode_chars=["✓"],
        removed_optouts=["+33611111111"],
        simulation=False,
        recipients=[f"+336120000{i:02d}" for i in range(60)],
    )
    values.update(over)
    return values


def roundtrip(msg) -> email.message.EmailMessage:
    """What a receiving server sees: the bytes the outbox stores, parsed back."""
    data = msg.as_bytes(policy=POLICY.clone(linesep="\r\n"))
    return email.message_from_bytes(data, policy=email.policy.default)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


# ------------------------------------------------------------------ templates


def test_reply_text_is_escaped_in_html_and_intact_in_text(renderer):
    text, html = renderer.render("reply", event=event(text=HOSTILE), subscription="ops")
    assert '<script>alert("x")</script> & co' in text
    assert "second line 日本語" in text and "third العربية" in text
    assert "\r" not in text
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co" in html
    assert "日本語" in html and "العربية" in html
    assert "<br>" in html  # the author's line breaks survive in HTML

    msg = roundtrip(
        build_message(
            sender="octorelay <relay@sms.example.org>",
            to=["ops@example.org"],
            subject="SMS reply",
            text=text,
            html=html,
            message_id=make_msgid(DOMAIN),
        )
    )
    assert '<script>alert("x")</script>' in msg.get_body(("plain",)).get_content()
    assert "third العربية" in msg.get_body(("plain",)).get_content()
    got_html = msg.get_body(("html",)).get_content()
    assert "<script>" not in got_html and "日本語" in got_html


def test_reply_names_everything_spec_asks_for(renderer):
    text, html = renderer.render("reply", event=event(), subscription=None)
    for part in (text, html):
        assert "+33 6 12 34 56 78" in part  # international format
        assert "Alice Martin" in part
        assert "France" in part
        assert "2026-11-24 15:04 CET" in part
        assert "OK, see you at 10" in part
        assert "Meeting tomorrow at 10?" in part  # the SMS answered
    assert 'href="mailto:+33612345678@sms.example.org"' in html
    assert "Reply by SMS" in html
    assert "you sent an SMS by e-mail" in text


def test_reply_variants_stop_and_delivery(renderer):
    text, _ = renderer.render("reply", event=event(kind="stop", text="STOP", answered=None), subscription="ops")
    assert text.startswith("STOP from +33 6 12 34 56 78")
    assert 'subscription "ops"' in text
    text, html = renderer.render(
        "reply",
        event=event(kind="delivery", text="", status="DELIVERED", answered=None, contact=""),
        subscription="ops",
    )
    assert "DELIVERED" in text and "DELIVERED" in html
    assert "mailto:" not in html  # nothing to answer on a receipt


def test_digest_groups_entries_with_a_reply_link_each(renderer):
    us = event(
        number="+14155550123",
        contact="",
        country="US",
        country_name="United States",
        answered=None,
        reply_to="+14155550123@sms.example.org",
    )
    groups = [
        {"title": "France (FR)", "count": 1, "entries": [event()]},
        {"title": "United States (US)", "count": 1, "entries": [us]},
    ]
    text, html = renderer.render(
        "digest",
        name="ops",
        count=2,
        summary="2 SMS replies",
        group_by="country",
        groups=groups,
        since="2026-11-23 08:00 CET",
        until="2026-11-24 08:00 CET",
    )
    assert text.startswith("2 SMS replies — ops")
    for part in (text, html):
        assert "France (FR)" in part and "United States (US)" in part
        assert "+1 415-555-0123" in part
        assert "Meeting tomorrow at 10?" in part
    assert "mailto:+33612345678@sms.example.org" in text
    assert 'href="mailto:+14155550123@sms.example.org"' in html
    assert html.count('href="mailto:') == 2

    text, html = renderer.render(
        "digest",
        name="ops",
        count=0,
        summary="0 SMS replies",
        group_by="date",
        groups=[],
        since="the start",
        until="2026-11-24 08:00 CET",
    )
    assert "Nothing new" in text and "Nothing new" in html


def test_confirmation_shows_the_campaign(renderer):
    text, html = renderer.render("confirmation", campaign=campaign())
    for part in (text, html):
        assert "t-1" in part
        assert "120" in part and "5.005" in part and "94.995" in part
        assert "UCS-2" in part and "✓" in part
        assert "+33 6 11 11 11 11" in part  # removed opt-out, named
        assert "+33 6 12 00 00 49" in part and "+33 6 12 00 00 50" not in part
        assert "and 10 more" in part
    text, html = renderer.render(
        "confirmation",
        campaign=campaign(simulation=True, residual_credit=None, tickets=[""], unicode_chars=[], recipients=[]),
    )
    assert "Simulation" in text and "Simulation" in html
    assert "Credit left" not in text
    assert "not known yet" in text


def test_failure_shows_code_message_and_advice(renderer):
    error = {"code": 121, "message": "STOP mention missing", "advice": "Add 'STOP au 30101' to the text."}
    text, html = renderer.render(
        "failure", campaign={"label": "Promo", "text": "Sale <today>", "recipients": ["+33612345678"]}, error=error
    )
    for part in (text, html):
        assert "121" in part and "STOP mention missing" in part and "STOP au 30101" in part
    assert "Sale <today>" in text and "Sale &lt;today&gt;" in html
    text, _ = renderer.render(
        "failure", campaign={"label": "x", "text": "y"}, error={"code": None, "message": "timed out", "advice": ""}
    )
    assert "timed out" in text and "None" not in text


def test_alert(renderer):
    text, html = renderer.render("alert", residual_credit=3.5, threshold=10)
    assert "3.5" in text and "10" in text and "3.5" in html
    text, _ = renderer.render("alert", residual_credit=None, threshold=10, error="101 incorrect login")
    assert "101 incorrect login" in text


def test_a_missing_context_key_is_an_error(renderer):
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        renderer.render("reply", event=event())  # no `subscription`


def test_override_directory_comes_first(tmp_path):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "alert.txt").write_text("Custom: {{ residual_credit }}\n")
    text, html = Renderer(tmp_path).render("alert", residual_credit=1, threshold=2)
    assert text == "Custom: 1\n"
    assert "<html" in html  # the packaged HTML template still serves


def test_filters():
    assert intl("+33612345678") == "+33 6 12 34 56 78"
    assert intl("not a number") == "not a number"
    assert country_name("+33612345678") == "France"
    assert country_name_iso("DE") == "Germany"
    assert country_name_iso("") == ""


# ------------------------------------------------------------------ messages


def test_message_structure_and_headers():
    msgid = make_msgid(DOMAIN)
    assert msgid.startswith("<") and msgid.endswith(f"@{DOMAIN}>")
    assert make_msgid(DOMAIN) != msgid
    msg = roundtrip(
        build_message(
            sender="octorelay <relay@sms.example.org>",
            to=["alice@example.org", "Bob <bob@example.org>"],
            subject="Re: Meeting",
            text="plain",
            html="<p>html</p>",
            message_id=msgid,
            in_reply_to="<orig@example.org>",
            references=["<root@example.org>", "<orig@example.org>"],
            reply_to="+33612345678@sms.example.org",
            date=datetime(2026, 11, 24, 14, 4, tzinfo=UTC),
        )
    )
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == msgid
    assert msg["In-Reply-To"] == "<orig@example.org>"
    assert msg["References"] == "<root@example.org> <orig@example.org>"
    assert msg["Reply-To"] == "+33612345678@sms.example.org"
    assert msg["Date"] == "Tue, 24 Nov 2026 14:04:00 +0000"
    assert msg["To"].addresses[1].addr_spec == "bob@example.org"


def test_header_injection_is_neutralised():
    msg = build_message(
        sender="octorelay <relay@sms.example.org>",
        to=["alice@example.org"],
        subject="Hi\r\nBcc: evil@x",
        text="t",
        html="h",
        message_id=make_msgid(DOMAIN),
        in_reply_to="<a@b>\r\nBcc: evil@x",
        reply_to="+33612345678@sms.example.org\nBcc: evil@x",
    )
    data = msg.as_bytes(policy=POLICY.clone(linesep="\r\n"))
    got = email.message_from_bytes(data, policy=email.policy.default)
    assert got["Bcc"] is None
    assert b"\r\nBcc:" not in data and b"\nBcc:" not in data
    assert got["Subject"] == "Hi Bcc: evil@x"


def test_non_ascii_subject_is_encoded_and_long_references_stay_readable():
    long_id = "<" + "a" * 90 + "@example.org>"
    msg = build_message(
        sender="octorelay <relay@sms.example.org>",
        to=["alice@example.org"],
        subject="Re: Réunion 日本語 — العربية",
        text="t",
        html="h",
        message_id=make_msgid(DOMAIN),
        references=[long_id, "<b@example.org>", long_id],
    )
    data = msg.as_bytes(policy=POLICY.clone(linesep="\r\n"))
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"=?utf-8?" in head  # RFC 2047
    assert long_id.encode() in head  # never encoded or split inside an id
    got = email.message_from_bytes(data, policy=email.policy.default)
    assert got["Subject"] == "Re: Réunion 日本語 — العربية"
    assert got["References"].split() == [long_id, "<b@example.org>", long_id]
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


# ------------------------------------------------------------------ skeletons (render_event)


VARIANTS = [
    {},
    {"contact": ""},
    {"answered": None, "ticket": ""},
    {"reply_to": "", "country": "", "country_name": ""},
    {"text": 'a <b> & "c" \'d\' ' + "long words " * 20},  # escaped, and truncated in the preheader
    {"text": "Zoë 日本語 😀", "contact": "O'Brien & <Sons>"},
    {"kind": "stop", "text": "STOP"},
    {"kind": "delivery", "text": "", "status": "DELIVERED", "answered": None},
    {"kind": "delivery", "text": "", "status": "", "answered": None},
    {"text": "two\nlines"},  # split into quoted lines: Jinja2 renders it
    {"answered": "a\r\nb", "text": "x\ry"},
    {"number": "not a number", "text": "\ue000 0 \ue001"},
]


@pytest.mark.parametrize("over", VARIANTS)
@pytest.mark.parametrize("subscription", ["ops", None])
def test_render_event_matches_a_full_render(renderer, over, subscription):
    for number in ("+33612345678", "+447400123456"):  # the same shape twice, with other values
        values = event(**{"number": number, "reply_to": f"{number}@sms.example.org", **over})
        assert renderer.render_event("reply", values, subscription) == renderer.render(
            "reply", event=values, subscription=subscription
        )


def test_an_overridden_template_is_always_rendered_in_full(tmp_path):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "reply.txt").write_text("{{ event.text|upper }} {{ (event.number ~ 'x')|length }}\n")
    custom = Renderer(tmp_path)
    values = event()
    assert custom.render_event("reply", values, "ops") == custom.render("reply", event=values, subscription="ops")
    assert custom.render_event("reply", values, "ops")[0] == "OK, SEE YOU AT 10 13\n"


def test_warm_compiles_every_template_before_the_first_e_mail(caplog):
    """Compiled at start (and reload), not on the event loop's first callbacks; skeletons render the same after."""
    renderer = Renderer()
    renderer.warm()
    loaded = []
    loader = renderer.env.loader  # the skeletons' environment shares it
    get_source = loader.get_source
    loader.get_source = lambda env, name: loaded.append(name) or get_source(env, name)
    values = event()
    digest = {"name": "ops", "count": 0, "summary": "-", "group_by": "date", "groups": [], "since": "-", "until": "-"}
    renderer.render("digest", **digest)
    assert renderer.render_event("reply", values, "ops") == renderer.render("reply", event=values, subscription="ops")
    assert loaded == []  # nothing left to load or compile
    assert "does not compile" not in caplog.text


def test_warm_logs_a_broken_override_and_leaves_its_error_to_the_e_mail(tmp_path, caplog):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "alert.txt").write_text("{% if %}\n")
    (tmp_path / "mail" / ".reply.txt.swp").write_bytes(b"b0VIM 9.0\x00\xff\xfe")  # an editor's swap file
    (tmp_path / "mail" / "reply.txt~").write_bytes(b"\xff\xfe")
    custom = Renderer(tmp_path)
    custom.warm()
    assert "mail/alert.txt does not compile" in caplog.text
    assert "swp" not in caplog.text and "~" not in caplog.text  # not templates: not read
    assert custom.render_event("reply", event(), "ops")  # the others work
    with pytest.raises(jinja2.TemplateSyntaxError):
        custom.render("alert", text="x")
