"""The reply corpus: every client format × every language of `languages.LANGS`, plus client-specific cases and
messages that must stay untouched, each as the client really sends it (headers, MIME structure, charset,
transfer encoding, format=flowed) with the SMS text expected from it.

`python -m tests.reply_corpus.corpus DIR` writes every message as DIR/<name>.eml with DIR/<name>.txt beside
it, to read or to feed to another tool.
"""

from __future__ import annotations

import base64
import quopri
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.header import Header
from html import escape
from pathlib import Path

from tests.reply_corpus.languages import LANGS

RELAY = "+33612345678@sms.example.org"
DATE = "Mon, 12 Jan 2026 10:05:00 +0100"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    expected: str


# ---------------------------------------------------------------------------
# MIME, written out as the clients write it


def leaf(ctype: str, text: str, *, charset: str = "utf-8", cte: str = "quoted-printable", params: str = "") -> str:
    """One text part, its text encoded in `charset` and then in the transfer encoding `cte`."""
    data = text.replace("\n", "\r\n").encode(charset)
    if cte == "quoted-printable":
        body = quopri.encodestring(data).decode("ascii").replace("\r\n", "\n").replace("\n", "\r\n")
    elif cte == "base64":
        body = base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
    else:  # 8bit: the charset's bytes as they are (kept as latin-1 code points, written back out as bytes)
        body = data.decode("latin-1")
    return f'Content-Type: {ctype}; charset="{charset}"{params}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}'


def alternative(boundary: str, *parts: str) -> str:
    inner = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts)
    return f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n{inner}--{boundary}--\r\n'


def message(lang: str, body: str, *, extra: str = "", msgid: str, subject_prefix: str = "Re: ") -> bytes:
    data = LANGS[lang]
    subject = subject_prefix + data["subject"]
    if not subject.isascii():
        subject = Header(subject, "utf-8").encode()
    name, email = data["author"]
    headers = (
        f"Return-Path: <alice.smith@example.com>\r\n"
        f"Received: from mail.example.com (mail.example.com [192.0.2.10])\r\n"
        f"\tby sms.example.org (octorelay) with ESMTPS id 4Z1k2m3n4p\r\n"
        f"\tfor <{RELAY}>; {DATE}\r\n"
        f"Date: {DATE}\r\nFrom: Alice Smith <alice.smith@example.com>\r\nTo: {RELAY}\r\n"
        f"Subject: {subject}\r\nMessage-ID: {msgid}\r\n"
        f"In-Reply-To: <CAOrig0001@mail.example.com>\r\nReferences: <CAOrig0001@mail.example.com>\r\n"
        f"{extra}MIME-Version: 1.0\r\n"
    )
    del name, email
    return headers.encode("utf-8") + body.encode("latin-1")


def quote(lines: list[str], prefix: str = "> ") -> list[str]:
    return [prefix + line if line else prefix.rstrip() for line in lines]


def wrap(line: str, width: int = 76) -> list[str]:
    """Hard wrap as Gmail and Outlook do in their plain alternative; Gmail keeps "<" at the end of a line."""
    out, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > width:
            if word.startswith("<") and len(current) + 2 <= width:
                out.append(current + " <")
                current = word[1:]
                continue
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    out.append(current)
    return out


def flowed(lines: list[str], width: int = 72) -> str:
    """RFC 3676 as Thunderbird and Apple Mail write it: soft breaks end in a space; space-stuffing."""
    out = []
    for line in lines:
        depth = len(line) - len(line.lstrip(">"))
        prefix = ">" * depth + (" " if depth else "")
        content = line[depth:].lstrip(" ") if depth else line
        if not depth and content.startswith((" ", "From ", ">")):
            content = " " + content
        pieces = wrap(content, width - len(prefix)) if content else [""]
        for i, piece in enumerate(pieces):
            out.append(prefix + piece + (" " if i < len(pieces) - 1 else ""))
    return "\n".join(out) + "\n"


def html_lines(lines: list[str], tag: str = "div", attrs: str = "") -> str:
    return "".join(f"<{tag}{attrs}>{escape(line) if line else '<br>'}</{tag}>" for line in lines)


def attribution(lang: str, kind: str) -> str:
    name, email = LANGS[lang]["author"]
    return LANGS[lang][kind].format(name=name, email=email)


def header_block(lang: str, *, bold: bool = False) -> list[str]:
    frm, sent, to, subj, date, colon = LANGS[lang]["outlook"]
    name, email = LANGS[lang]["author"]
    star = "*" if bold else ""
    return [
        f"{star}{frm}{colon.rstrip()}{star} {name} <{email}>",
        f"{star}{sent}{colon.rstrip()}{star} {date}",
        f"{star}{to}{colon.rstrip()}{star} Alice Smith <alice.smith@example.com>",
        f"{star}{subj}{colon.rstrip()}{star} {LANGS[lang]['subject']}",
    ]


# ---------------------------------------------------------------------------
# One builder per client format: (lang) -> (body, extra headers, message-id); expected is the new words.


def gmail_web(lang: str) -> tuple[str, str, str]:
    data = LANGS[lang]
    attr = attribution(lang, "gmail")
    plain = data["new"] + [""] + wrap(attr) + [""] + quote(data["old"]) + [""]
    name, email = data["author"]
    attr_html = escape(attr).replace(escape(f"<{email}>"), f'&lt;<a href="mailto:{email}">{email}</a>&gt;')
    html = (
        f'<div dir="ltr">{html_lines(data["new"])}</div><br><div class="gmail_quote gmail_quote_container">'
        f'<div dir="ltr" class="gmail_attr">{attr_html}<br></div><blockquote class="gmail_quote" style="margin:0px '
        f'0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex"><div dir="ltr">'
        f"{html_lines(data['old'])}</div></blockquote></div>\n"
    )
    body = alternative(
        "000000000000a1b2c3d4e5f60718",
        leaf("text/plain", "\n".join(plain)),
        leaf("text/html", html),
    )
    del name
    return body, "", "<CAFr2x+Z8k1Q@mail.gmail.com>"


def gmail_app_unquoted(lang: str) -> tuple[str, str, str]:
    """The Gmail app and Google Inbox: the earlier message under the attribution, without ">"."""
    data = LANGS[lang]
    plain = data["new"] + ["", attribution(lang, "gmail_mobile"), ""] + data["old"] + [""]
    return leaf("text/plain", "\n".join(plain)), "", "<CAGm0bile77@mail.gmail.com>"


def outlook_desktop(lang: str) -> tuple[str, str, str]:
    data = LANGS[lang]
    plain = data["new"] + ["", ""] + header_block(lang) + [""] + data["old"] + [""]
    frm, sent, to, subj, date, colon = data["outlook"]
    name, email = data["author"]
    c = colon.rstrip().replace(" ", "&nbsp;")
    p = '<p class="MsoNormal">'
    html = (
        '<html xmlns:o="urn:schemas-microsoft-com:office:office"><head><meta http-equiv="Content-Type" '
        'content="text/html; charset=utf-8"><meta name="Generator" content="Microsoft Word 15 (filtered medium)">'
        '<style><!-- p.MsoNormal {margin:0cm; font-size:11.0pt; font-family:"Calibri",sans-serif;} --></style>'
        '</head><body lang="EN-US" link="#0563C1" vlink="#954F72"><div class="WordSection1">'
        + "".join(f"{p}{escape(line) if line else '<o:p>&nbsp;</o:p>'}</p>" for line in data["new"])
        + f"{p}<o:p>&nbsp;</o:p></p>"
        '<div><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
        f"{p}<b>{frm}{c}</b> {escape(name)} &lt;{email}&gt; <br><b>{sent}{c}</b> {escape(date)}<br>"
        f"<b>{to}{c}</b> Alice Smith &lt;alice.smith@example.com&gt;<br><b>{subj}{c}</b> {escape(data['subject'])}"
        "<o:p></o:p></p></div></div>"
        + f"{p}<o:p>&nbsp;</o:p></p>"
        + "".join(f"{p}{escape(line) if line else '<o:p>&nbsp;</o:p>'}</p>" for line in data["old"])
        + "</div></body></html>\n"
    )
    charset = data["charset"] if data["charset"] not in ("iso-2022-jp",) else "utf-8"
    body = alternative(
        "_000_DB8PR04MB6789A1B2C3D4E5F6DB8PR04MB6789eurp_",
        leaf("text/plain", "\n".join(plain), charset=charset),
        leaf("text/html", html),
    )
    extra = f"Thread-Topic: {Header(data['subject'], 'utf-8').encode()}\r\nThread-Index: AQHbZ1k2m3n4p5q6r7s8t9u0==\r\n"
    extra += "X-MS-Has-Attach:\r\nContent-Language: en-US\r\n"
    return body, extra, "<DB8PR04MB6789A1B2C3D4E5F6@DB8PR04MB6789.eurprd04.prod.outlook.com>"


def outlook_plain_separator(lang: str) -> tuple[str, str, str]:
    """Outlook in plain-text mode (and Outlook 2003-2010): "-----Original Message-----" over the header block."""
    data = LANGS[lang]
    sep = f"-----{data['separator']}-----"
    plain = data["new"] + ["", sep] + header_block(lang) + [""] + data["old"] + [""]
    extra = "X-Mailer: Microsoft Outlook 16.0\r\nThread-Index: AdtZ1k2m3n4p5q6r==\r\nContent-Language: en-us\r\n"
    return leaf("text/plain", "\n".join(plain)), extra, "<000001db1a2b$3c4d5e6f$7a8b9c0d$@example.com>"


def outlook_web(lang: str) -> tuple[str, str, str]:
    """Outlook on the web / Outlook.com, HTML only: the original starts at divRplyFwdMsg under a rule."""
    data = LANGS[lang]
    frm, sent, to, subj, date, colon = data["outlook"]
    name, email = data["author"]
    c = colon.rstrip()
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"><style type="text/css" '
        'style="display:none;"> P {margin-top:0;margin-bottom:0;} </style></head><body dir="ltr">'
        + "".join(
            '<div class="elementToProof" style="font-family: Aptos, sans-serif; font-size: 12pt;">'
            f"{escape(line) if line else '<br>'}</div>"
            for line in data["new"]
        )
        + '<div id="appendonsend"></div><hr style="display:inline-block;width:98%" tabindex="-1">'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri, sans-serif" style="font-size:11pt" color="#000000">'
        f"<b>{frm}{c}</b> {escape(name)} &lt;{email}&gt;<br><b>{sent}{c}</b> {escape(date)}<br>"
        f"<b>{to}{c}</b> Alice Smith &lt;alice.smith@example.com&gt;<br><b>{subj}{c}</b> "
        f"{escape(data['subject'])}</font><div>&nbsp;</div></div>"
        f'<div class="BodyFragment"><font size="2"><span style="font-size:11pt;"><div class="PlainText">'
        + "<br>".join(escape(line) for line in data["old"])
        + "</div></span></font></div></body></html>\n"
    )
    return leaf("text/html", html), "", "<PR3P195MB0812A1B2C3D4@PR3P195MB0812.EURP195.PROD.OUTLOOK.COM>"


def iphone(lang: str) -> tuple[str, str, str]:
    data = LANGS[lang]
    attr = attribution(lang, "apple")
    plain = data["new"] + ["", data["iphone"], ""] + quote([attr, ""] + data["old"]) + [""]
    html = (
        '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body dir="auto">'
        + html_lines(data["new"], attrs=' dir="ltr"')
        + f'<div dir="ltr"><br><div dir="ltr">{escape(data["iphone"])}</div><div dir="ltr"><br>'
        f'<blockquote type="cite">{escape(attr)}<br><br></blockquote></div><blockquote type="cite">'
        + html_lines(data["old"], attrs=' dir="ltr"')
        + "</blockquote></div></body></html>\n"
    )
    body = alternative(
        "Apple-Mail-6B1E2C3D-4E5F-6A7B-8C9D-0E1F2A3B4C5D",
        leaf("text/plain", "\n".join(plain)),
        leaf("text/html", html),
    )
    return body, "X-Mailer: iPhone Mail (22C152)\r\n", "<6B1E2C3D-4E5F-6A7B-8C9D-0E1F2A3B4C5D@example.com>"


def apple_mail(lang: str) -> tuple[str, str, str]:
    data = LANGS[lang]
    attr = attribution(lang, "apple")
    plain = data["new"] + ["", attr, ""] + quote(data["old"]) + [""]
    html = (
        '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body style="'
        'overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">'
        + html_lines(data["new"])
        + f'<div><br><blockquote type="cite"><div>{escape(attr)}</div><br class="Apple-interchange-newline">'
        + html_lines(data["old"])
        + "</blockquote></div><br></body></html>\n"
    )
    body = alternative(
        "Apple-Mail=_1A2B3C4D-5E6F-7A8B-9C0D-1E2F3A4B5C6D",
        leaf("text/plain", flowed(plain), params="; format=flowed"),
        leaf("text/html", html),
    )
    return body, "X-Mailer: Apple Mail (2.3826.300.87.4.3)\r\n", "<1A2B3C4D-5E6F-7A8B-9C0D-1E2F3A4B5C6D@example.com>"


def thunderbird(lang: str) -> tuple[str, str, str]:
    """Plain text, format=flowed, 8bit; top-posted in half the languages, bottom-posted (its default) in the rest."""
    data = LANGS[lang]
    quoted = [attribution(lang, "thunderbird")] + quote(data["old"])
    bottom = list(LANGS).index(lang) % 2
    plain = quoted + [""] + data["new"] if bottom else data["new"] + [""] + quoted
    extra = "User-Agent: Mozilla Thunderbird\r\nContent-Language: " + lang + "\r\n"
    return leaf("text/plain", flowed(plain), cte="8bit", params="; format=flowed"), extra, "<a1b2c3d4@example.com>"


def samsung(lang: str) -> tuple[str, str, str]:
    """Samsung Email: footer, then a localized "-------- Original message --------" over From/Date/To/Subject."""
    data = LANGS[lang]
    footer, sep, date_name, date = data["samsung"]
    frm, _, to, subj, _, colon = data["outlook"]
    name, email = data["author"]
    c = colon.rstrip()
    block = [
        f"-------- {sep} --------",
        f"{frm}{c} {name} <{email}> ",
        f"{date_name}{c} {date} ",
        f"{to}{c} Alice Smith <alice.smith@example.com> ",
        f"{subj}{c} {data['subject']} ",
        "",
    ]
    plain = data["new"] + ["", "", "", footer] + block + data["old"] + [""]
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>'
        + html_lines(data["new"], attrs=' dir="auto"')
        + '<div dir="auto"><br></div><div dir="auto"><br></div><div id="composer_signature" dir="auto">'
        f'<div style="font-size:85%;color:#575757" dir="auto">{escape(footer)}</div></div><div dir="auto"><br>'
        '</div><div align="left" dir="auto" style="font-size:100%;color:#000000">'
        + html_lines(block)
        + "</div>"
        + html_lines(data["old"])
        + "</body></html>\n"
    )
    body = alternative(
        "--_com.samsung.android.email_1234567890123456",
        leaf("text/plain", "\n".join(plain), cte="base64"),
        leaf("text/html", html, cte="base64"),
    )
    return body, "", "<abcdef0123456789@email.android.com>"


FORMATS: dict[str, Callable[[str], tuple[str, str, str]]] = {
    "gmail-web": gmail_web,
    "gmail-app-unquoted": gmail_app_unquoted,
    "outlook-desktop": outlook_desktop,
    "outlook-plain": outlook_plain_separator,
    "outlook-web": outlook_web,
    "iphone": iphone,
    "apple-mail": apple_mail,
    "thunderbird": thunderbird,
    "samsung": samsung,
}


def new_words(lang: str) -> str:
    return "\n".join(LANGS[lang]["new"])


# ---------------------------------------------------------------------------
# Client-specific formats and messages that must stay as they are: (name, lang, body, extra, expected)


def _plain(text: str, **kw: str) -> str:
    return leaf("text/plain", text, **kw)


def _specials() -> Iterator[tuple[str, str, str, str, str]]:
    en, fr, de, ru = (LANGS[x] for x in ("en", "fr", "de", "ru"))
    yahoo_attr = {
        "en": "On Monday, January 12, 2026, 09:41:05 AM GMT+1, John Doe <john.doe@example.com> wrote:",
        "fr": "Le lundi 12 janvier 2026, 09:41:05 UTC+1, Jean Dupont <jean.dupont@example.fr> a écrit :",
        "de": (
            "Am Montag, 12. Januar 2026, 09:41:05 MEZ hat Hans Müller <hans.mueller@example.de> Folgendes geschrieben:"
        ),
        "es": "El lunes, 12 de enero de 2026, 09:41:05 CET, Juan García <juan.garcia@example.es> escribió:",
        "it": "Il lunedì 12 gennaio 2026, 09:41:05 CET, Mario Rossi <mario.rossi@example.it> ha scritto:",
    }
    for lang, attr in yahoo_attr.items():
        data = LANGS[lang]
        plain = data["new"] + ["", "", "    " + attr + "  ", " ", ""] + [" " + x if x else "" for x in data["old"]]
        html = (
            '<html><head></head><body><div class="ydp3a2b1c0yahoo-style-wrap" style="font-family:Helvetica Neue, '
            'Helvetica, Arial, sans-serif;font-size:13px;">'
            + html_lines(data["new"])
            + '</div><div id="yahoo_quoted_1234567890" class="yahoo_quoted"><div style="font-family:\'Helvetica'
            f" Neue', Helvetica, Arial, sans-serif;font-size:13px;color:#26282a;\"><div>{escape(attr)}</div>"
            "<div><br></div><div><br></div>" + html_lines(data["old"]) + "</div></div></body></html>\n"
        )
        body = alternative(
            "----=_Part_1234567_890123456.1768210000000",
            leaf("text/plain", "\n".join(plain)),
            leaf("text/html", html),
        )
        yield f"yahoo/{lang}", lang, body, "X-Mailer: WebService/1.1.23040 YMailNorrin\r\n", new_words(lang)

    # Hotmail (French): "De : … / Envoyé : …" with a space before the colon, under Outlook's underscores
    block = [
        "De : Jean Dupont <jean.dupont@example.fr>",
        "Envoyé : lundi 12 janvier 2026 09:41",
        "À : Marie <marie@example.fr>",
        "Objet : Maintenance",
    ]
    plain = fr["new"] + ["", "", "________________________________"] + block + [""] + fr["old"]
    yield "hotmail-underscores/fr", "fr", _plain("\n".join(plain)), "", new_words("fr")
    # ... and indented, without the underscores (a French webmail's reply)
    plain = fr["new"] + ["", ""] + ["  " + x for x in block] + [""] + fr["old"]
    yield "hotmail-indented/fr", "fr", _plain("\n".join(plain)), "", new_words("fr")
    # Hotmail's older HTML: Date/Subject/From after a horizontal rule, no structure to go by
    html = (
        "<html><head><style><!-- .hmmessage P { margin:0px; padding:0px } --></style></head>"
        '<body class="hmmessage"><div dir="ltr">'
        + "<br>".join(escape(x) for x in fr["new"])
        + "<br><br><div><hr>Date: Mon, 12 Jan 2026 09:41:00 +0100<br>Subject: Maintenance<br>"
        "From: jean.dupont@example.fr<br>To: marie@example.fr<br><br>"
        + "<br>".join(escape(x) for x in fr["old"])
        + "</div></div></body></html>\n"
    )
    yield "hotmail-hr/fr", "fr", leaf("text/html", html), "", new_words("fr")
    # French webmails (Orange, SFR, La Poste): "Message du :" under a line of "="
    plain = (
        fr["new"]
        + [
            "",
            "",
            "=" * 40,
            "Message du : 12/01/2026 09:41",
            'De : "Jean Dupont" <jean.dupont@example.fr>',
            "A : marie@example.fr",
            "Sujet : Maintenance",
            "",
        ]
        + quote(fr["old"])
    )
    yield "webmail-orange/fr", "fr", _plain("\n".join(plain), charset="iso-8859-1"), "", new_words("fr")
    # Mail.ru: attribution "от …:" and a quote marked ">" without a space
    attr = "Понедельник, 12 января 2026, 9:41 +03:00 от Иван Петров <ivan.petrov@example.ru>:"
    plain = ru["new"] + ["", "", attr] + quote(["", ""] + ru["old"], ">")
    html = (
        "<HTML><BODY>" + html_lines(ru["new"]) + '<div>&nbsp;</div><blockquote style="border-left:1px solid '
        f'#0857A6; margin:10px; padding:0 0 0 10px;">{escape(attr)}<br>&nbsp;<div id=""><div class="js-helper '
        'js-readmsg-msg"><div><div id="style_17682100001234567890_BODY">'
        + html_lines(ru["old"])
        + "</div></div></div></div></blockquote></BODY></HTML>\n"
    )
    body = alternative(
        "--ALT--a1B2c3D41768210000",
        leaf("text/plain", "\n".join(plain), cte="base64"),
        leaf("text/html", html, cte="base64"),
    )
    yield "mail.ru/ru", "ru", body, "X-Mailer: Mail.Ru Mailer 1.0\r\n", new_words("ru")
    # Mail.ru in English: "Monday, 12 January 2026, 9:41 +03:00 from John Doe <…>:" then the old text unquoted
    attr = "Monday, 12 January 2026, 9:41 +03:00 from John Doe <john.doe@example.com>:"
    plain = en["new"] + ["", "", attr, ""] + en["old"]
    yield "mail.ru/en", "en", _plain("\n".join(plain), cte="base64"), "", new_words("en")
    # Yandex: HTML only, base64, attribution with the name in quotes, then a blockquote
    html = (
        "<div>" + "</div><div>".join(escape(x) if x else "&nbsp;" for x in ru["new"]) + "</div><div>&nbsp;</div>"
        "<div>12.01.2026, 09:41, &#34;Иван Петров&#34; &lt;ivan.petrov@example.ru&gt;:</div>"
        "<blockquote>" + html_lines(ru["old"]) + "</blockquote>\n"
    )
    yield "yandex-html/ru", "ru", leaf("text/html", html, cte="base64"), "", new_words("ru")
    # Yandex's plain alternative: the old text under the attribution, without ">"
    plain = ru["new"] + ["", '12.01.2026, 09:41, "Иван Петров" <ivan.petrov@example.ru>:'] + ru["old"]
    yield "yandex-plain/ru", "ru", _plain("\n".join(plain)), "", new_words("ru")
    # Android stock client in Russian
    plain = (
        ru["new"]
        + ["", "", "12 янв. 2026 г. 9:41 пользователь Иван Петров <ivan.petrov@example.ru>", "написал:", ""]
        + quote(ru["old"])
    )
    yield "android/ru", "ru", _plain("\n".join(plain), cte="base64"), "", new_words("ru")
    # Windows Mail, HTML, Russian: a top-border div with "От:/Отправлено:" and LRM marks in the date
    html = (
        '<html><head></head><body><div dir="ltr">' + html_lines(ru["new"]) + "<div><br></div>"
        '<div style="padding-top: 5px; border-top-color: rgb(229, 229, 229); border-top-width: 1px; '
        "border-top-style: solid;\"><div><font face=\" 'Calibri', 'Segoe UI', 'Meiryo', sans-serif\" "
        "style='line-height: 15pt; letter-spacing: 0.02em;'><b>От:</b> <a href=\"mailto:ivan.petrov@example.ru\">"
        "Иван Петров</a><br><b>Отправлено:</b> \u200e12\u200e \u200eянваря\u200e \u200e2026\u200e г. 9:41<br>"
        '<b>Кому:</b> Ольга<br><b>Тема:</b> Сервер</font></div></div><div><br></div><div dir="">'
        + html_lines(ru["old"])
        + "</div></div></body></html>\n"
    )
    yield "windows-mail/ru", "ru", leaf("text/html", html), "X-Mailer: Windows Mail\r\n", new_words("ru")
    # ... and its plain alternative: names without addresses, no subject
    plain = ru["new"] + ["", "От: Иван Петров", "Отправлено: 12 января 2026 г. 9:41", "Кому: Ольга", ""] + ru["old"]
    yield "windows-mail-plain/ru", "ru", _plain("\n".join(plain)), "X-Mailer: Windows Mail\r\n", new_words("ru")
    # Zoho: "---- On … wrote ----" and the old text under it
    for lang, attr in {
        "en": "---- On Mon, 12 Jan 2026 09:41:00 +0100 John Doe <john.doe@example.com> wrote ---",
        "fr": "---- Le lun., 12 janv. 2026 09:41:00 +0100 Jean Dupont <jean.dupont@example.fr> a écrit ---",
        "de": "---- Am Mo, 12 Jan 2026 09:41:00 +0100 Hans Müller <hans.mueller@example.de> schrieb ---",
    }.items():
        data = LANGS[lang]
        plain = data["new"] + ["", "", "", "", attr, "", ""] + data["old"] + [""]
        html = (
            '<!DOCTYPE html><html><head><meta content="text/html;charset=UTF-8" http-equiv="Content-Type">'
            '</head><body><div style="font-family: Verdana, Arial, Helvetica, sans-serif; font-size: 10pt;">'
            + html_lines(data["new"])
            + '<div class="zmail_extra_hr" style="border-top: 1px solid rgb(204, 204, 204);'
            ' height: 0px; margin-top: 10px; margin-bottom: 10px; line-height: 0px;"><br></div><div class="zmail_extra"'
            f' data-zbluepencil-ignore="true"><div><br></div><div id="Zm-_Id_-Sgn1">{escape(attr)}<br></div>'
            '<blockquote style="margin: 0px;">' + html_lines(data["old"]) + "</blockquote></div></div></body></html>\n"
        )
        body = alternative(
            "----=_Part_98765_1234567890.1768210000000", leaf("text/plain", "\n".join(plain)), leaf("text/html", html)
        )
        yield f"zoho/{lang}", lang, body, "User-Agent: Zoho Mail\r\nX-Mailer: Zoho Mail\r\n", new_words(lang)
    # Evolution: bottom-posted under "On <ISO date> …, John wrote:"
    for lang, attr in {
        "en": "On Mon, 2026-01-12 at 09:41 +0100, John Doe wrote:",
        "fr": "Le lundi 12 janvier 2026 à 09:41 +0100, Jean Dupont a écrit :",
        "de": "Am Montag, dem 12.01.2026 um 09:41 +0100 schrieb Hans Müller:",
    }.items():
        data = LANGS[lang]
        plain = [attr] + quote(data["old"]) + [""] + data["new"] + ["", "-- ", "Alice Smith", "Ops team"]
        yield f"evolution/{lang}", lang, _plain("\n".join(plain)), "X-Mailer: Evolution 3.50.2-1\r\n", new_words(lang)
    # Gmail's ISO-date form, old text without ">"
    plain = en["new"] + ["", "On 2026-01-12 09:41, John Doe <john.doe@example.com> wrote:", ""] + en["old"]
    yield "gmail-iso/en", "en", _plain("\n".join(plain)), "", new_words("en")
    # "On … wrote" without a colon, then the old text
    plain = en["new"] + ["", "On Mon, Jan 12, 2026 at 9:41 AM John Doe <john.doe@example.com> wrote", ""] + en["old"]
    yield "no-colon/en", "en", _plain("\n".join(plain)), "", new_words("en")
    # An attribution wrapped over three lines (Apple Mail in a narrow window)
    plain = en["new"] + ["", "On Dec 16, 2011, at 12:47 PM, Corey Donohoe <", "corey@example.com>", "wrote:", ""]
    plain += quote(en["old"])
    yield "three-lines/en", "en", _plain("\n".join(plain), params="; format=flowed"), "", new_words("en")
    # German Gmail over two lines, old text quoted
    plain = (
        de["new"]
        + ["", "Am Mo., 12. Jan. 2026 um 09:41 Uhr schrieb Hans Müller <", "hans.mueller@example.de>:", ""]
        + quote(de["old"])
    )
    yield "gmail-two-lines/de", "de", _plain("\n".join(plain)), "", new_words("de")
    # Quoted lines re-wrapped by the sender's client: continuations without ">"
    old = [
        "> Could you check whether the backup of the database finished last night",
        "before the",
        "> maintenance window? The monitoring shows a warning on the second",
        "node.",
        "> Thanks, John",
    ]
    plain = en["new"] + ["", "On Mon, Jan 12, 2026 at 9:41 AM John Doe <john.doe@example.com> wrote:"] + old
    yield "rewrapped/en", "en", _plain("\n".join(plain)), "", new_words("en")
    old = [
        "> Est-ce que la sauvegarde de la base s'est bien terminée cette nuit avant",
        "la",
        "> fenêtre de maintenance ? La supervision montre une alerte sur le second",
        "serveur.",
    ]
    plain = fr["new"] + ["", "Le 12/01/2026 à 09:41, Jean Dupont a écrit :"] + old
    yield "rewrapped/fr", "fr", _plain("\n".join(plain)), "", new_words("fr")
    # Outlook's bold "*From:*" block under a dashed line (its plain alternative of an HTML reply)
    plain = en["new"] + ["", "-----", ""] + header_block("en", bold=True) + [""] + en["old"]
    yield "outlook-bold/en", "en", _plain("\n".join(plain)), "", new_words("en")
    # Outlook for iOS: the footer with its link, then underscores and the header block
    plain = en["new"] + ["", "Get Outlook for iOS<https://aka.ms/o0ukef>", "________________________________"]
    plain += header_block("en") + [""] + en["old"]
    yield "outlook-ios/en", "en", _plain("\n".join(plain)), "", new_words("en")
    plain = fr["new"] + ["", "Obtenir Outlook pour Android<https://aka.ms/AAb9ysg>", "________________________________"]
    plain += header_block("fr") + [""] + fr["old"]
    yield "outlook-android/fr", "fr", _plain("\n".join(plain)), "", new_words("fr")
    # Danish and Chinese header blocks with no separator at all
    for lang in ("da", "zh", "pl", "fi", "cs"):
        data = LANGS[lang]
        plain = data["new"] + [""] + header_block(lang) + [""] + data["old"]
        yield f"header-block-bare/{lang}", lang, _plain("\n".join(plain)), "", new_words(lang)
    # Chinese Foxmail: full-width colons
    zh = LANGS["zh"]
    plain = (
        zh["new"]
        + [
            "",
            "------------------ 原始邮件 ------------------",
            "发件人：王伟 <wang.wei@example.cn>",
            "发送时间：2026年1月12日(星期一) 上午9:41",
            "收件人：李娜",
            "主题：服务器",
            "",
        ]
        + zh["old"]
    )
    yield "foxmail/zh", "zh", _plain("\n".join(plain), cte="base64"), "X-Mailer: Foxmail 7.2\r\n", new_words("zh")
    # Forwarded by Apple Mail: "Begin forwarded message:" and the original
    plain = en["new"] + ["", "Begin forwarded message:", ""] + header_block("en") + [""] + en["old"]
    yield "apple-forward/en", "en", _plain("\n".join(plain)), "", new_words("en")
    plain = en["new"] + ["", "---------- Forwarded message ---------"] + header_block("en") + [""] + en["old"]
    yield "gmail-forward/en", "en", _plain("\n".join(plain)), "", new_words("en")

    # Bottom-posted under a plain attribution div and a blockquote (Yandex, Mail.ru's web client)
    html = (
        "<div>12.01.2026, 09:41, &#34;Иван Петров&#34; &lt;ivan.petrov@example.ru&gt;:</div><blockquote>"
        + html_lines(ru["old"])
        + "</blockquote><div>&nbsp;</div>"
        + html_lines(ru["new"])
        + "\n"
    )
    yield "yandex-bottom/ru", "ru", leaf("text/html", html, cte="base64"), "", new_words("ru")
    # Gmail's "Indent more" is a blockquote without a border: the sender's own words
    html = (
        '<div dir="ltr"><div>Steps for tonight:</div><blockquote style="margin:0 0 0 40px;border:none;padding:0px">'
        "<div>1. stop the service</div><div>2. copy the database</div></blockquote><div>Thanks</div></div>\n"
    )
    expected = "Steps for tonight:\n1. stop the service\n2. copy the database\nThanks"
    yield "gmail-indent/en", "en", leaf("text/html", html), "", expected
    # Outlook inside one organisation: no addresses in the header block
    block = ["From: John Doe", "Sent: Monday, January 12, 2026 9:41 AM", "To: Alice Smith", "Subject: Patch status"]
    plain = en["new"] + ["", ""] + block + [""] + en["old"]
    yield "outlook-exchange/en", "en", _plain("\n".join(plain)), "", new_words("en")
    # KMail and Polish webmails
    plain = LANGS["it"]["new"] + ["", "In data lunedì 12 gennaio 2026 09:41:05 CET, Mario Rossi ha scritto:"]
    plain += quote(LANGS["it"]["old"])
    yield "kmail/it", "it", _plain("\n".join(plain)), "User-Agent: KMail/5.2.3\r\n", new_words("it")
    plain = LANGS["pl"]["new"] + ["", "Dnia 12.01.2026 o 09:41 Jan Kowalski <jan.kowalski@example.pl> napisał(a):", ""]
    plain += LANGS["pl"]["old"]
    yield "webmail-dnia/pl", "pl", _plain("\n".join(plain), charset="iso-8859-2"), "", new_words("pl")
    # A signature separator written with a non-breaking space
    plain = en["new"] + ["--\u00a0", "Alice Smith", "+33 6 12 34 56 78"]
    yield "signature-nbsp/en", "en", _plain("\n".join(plain)), "", new_words("en")

    # Gmail in Chinese, its attribution wrapped before the time
    zh = LANGS["zh"]
    plain = zh["new"] + ["", "王伟 <wang.wei@example.cn> 于2026年1月12日周一", "09:41写道：", ""] + quote(zh["old"])
    yield "gmail-wrapped/zh", "zh", _plain("\n".join(plain)), "", new_words("zh")
    # Zimbra (Free, in French): "----- Mail original -----" over De/À/Envoyé/Objet
    plain = (
        fr["new"]
        + [
            "",
            "----- Mail original -----",
            'De: "Jean Dupont" <jean.dupont@free.fr>',
            'À: "Marie" <marie@free.fr>',
            "Envoyé: Lundi 12 Janvier 2026 09:41:05",
            "Objet: Maintenance",
            "",
        ]
        + fr["old"]
    )
    yield "zimbra-free/fr", "fr", _plain("\n".join(plain)), "X-Mailer: Zimbra 8.8.15_GA_4484\r\n", new_words("fr")
    # Seznam (Czech): "---------- Původní e-mail ----------"
    cs = LANGS["cs"]
    plain = (
        cs["new"]
        + [
            "",
            "---------- Původní e-mail ----------",
            "Od: Jan Novák <jan.novak@seznam.cz>",
            "Komu: Petra <petra@seznam.cz>",
            "Datum: 12. 1. 2026 9:41:05",
            "Předmět: Zásilka",
            "",
        ]
        + cs["old"]
    )
    yield "seznam/cs", "cs", _plain("\n".join(plain), charset="iso-8859-2"), "", new_words("cs")
    # GMX / Web.de (German): the date first, then Von/An/Betreff, with no separator line
    plain = de["new"] + [
        "",
        "",
        "Gesendet: Montag, 12. Januar 2026 um 09:41 Uhr",
        'Von: "Hans Müller" <hans.mueller@gmx.de>',
        "An: anna@gmx.de",
        "Betreff: Server",
        "",
    ]
    plain += de["old"]
    yield "gmx/de", "de", _plain("\n".join(plain)), "", new_words("de")

    # A sign-off just above an attribution that has no date is the sender's, not part of the attribution
    plain = ["Works now, thanks :)", "John Doe <john.doe@example.com> wrote:"] + quote(en["old"])
    yield "signoff-smiley/en", "en", _plain("\n".join(plain)), "", "Works now, thanks :)"
    plain = ["Done.", "", "Best regards,", "John Doe wrote:"] + quote(en["old"])
    yield "signoff-comma/en", "en", _plain("\n".join(plain)), "", "Done.\n\nBest regards,"

    # Inline replies: the sender's lines between the quotes stay
    plain = [
        "On Mon, Jan 12, 2026 at 9:41 AM John Doe <john.doe@example.com> wrote:",
        "> Is the patch deployed?",
        "",
        "Yes, on all front servers.",
        "",
        "> And the database?",
        "",
        "Tonight at 22:00.",
        "",
        "> Thanks,",
        "> John",
    ]
    yield "inline/en", "en", _plain("\n".join(plain)), "", "Yes, on all front servers.\n\nTonight at 22:00."
    plain = [
        "Bonjour,",
        "",
        "Le 12/01/2026 à 09:41, Jean Dupont a écrit :",
        "> La maintenance de ce soir est-elle confirmée ?",
        "Oui, à 22h.",
        "> Faut-il prévenir les clients ?",
        "Non, c'est déjà fait.",
        "",
        "Marie",
    ]
    expected = "Bonjour,\n\nOui, à 22h.\nNon, c'est déjà fait.\n\nMarie"
    yield "inline/fr", "fr", _plain(flowed(plain), cte="8bit", params="; format=flowed"), "", expected
    plain = [
        "Am 12.01.2026 um 09:41 schrieb Hans Müller <hans.mueller@example.de>:",
        "",
        "> Der Server antwortet nicht mehr.",
        "",
        "Läuft wieder.",
        "",
        "> Kannst du nachsehen?",
        "",
        "Schon erledigt.",
    ]
    yield "inline/de", "de", _plain("\n".join(plain)), "", "Läuft wieder.\n\nSchon erledigt."

    # Left as they are: nothing in them is an earlier message
    untouched = {
        "on-monday/en": "On Monday we deploy the new version.\nOn Tuesday we check the logs.",
        "dash-list/en": "Shopping list:\n-- bread\n-- milk\n-- eggs",
        "url-wrote/en": "The page is at https://example.com/who-wrote:\nhttps://example.org/he-wrote:/x",
        "itinerary/en": "From: Paris\nTo: Lyon\nDate: Monday",
        "from-line/en": "From: the ops team, hello",
        "stuffed/en": "Backups done.\n >90% of disks are fine.",
        "code/en": "if a > b:\n    return a",
        "what-i-wrote/en": "Here is what I wrote:\nThe server is back.",
        "sent-from-sentence/en": "Sent from my desk at the office because the VPN is down again, sorry for the delay",
        "le-matin/fr": "Le matin on ouvre à 8h.\nLe soir on ferme à 19h.",
        "de-nous/fr": "De : 9h à 12h\nÀ : la salle B",
        "am-montag/de": "Am Montag schrieb ich dir schon.\nBitte antworte.",
        "quote-char/en": "Temperature > 30 C in room 2.",
        "dashes/en": "Status\n-----\nAll green.",
        "wrote-story/en": "The children wrote:\nwe love the new playground",
    }
    for name, text in untouched.items():
        lang = name.rsplit("/", 1)[1]
        yield f"untouched-{name}", lang, _plain(text), "", text
    # and new words only, in every language, with nothing to remove
    for lang in LANGS:
        yield f"untouched-plain/{lang}", lang, _plain(new_words(lang), cte="8bit"), "", new_words(lang)


def cases() -> list[Case]:
    out = []
    for fmt, build in FORMATS.items():
        for lang in LANGS:
            body, extra, msgid = build(lang)
            out.append(Case(f"{fmt}/{lang}", message(lang, body, extra=extra, msgid=msgid), new_words(lang)))
    for name, lang, body, extra, expected in _specials():
        msgid = f"<{name.replace('/', '.')}@example.com>"
        out.append(Case(name, message(lang, body, extra=extra, msgid=msgid), expected))
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for case in cases():
        stem = case.name.replace("/", "_")
        (target / f"{stem}.eml").write_bytes(case.raw)
        (target / f"{stem}.txt").write_text(case.expected + "\n", encoding="utf-8")
