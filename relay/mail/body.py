"""The SMS text of an e-mail: the first text part's new words, without quotes, signatures or forwarded originals.

SPEC §5 steps 1-5. Mail from real clients is messy (wrong charsets, broken
base64, missing boundaries), so every read here degrades to "no text"
rather than raising: the only exception that leaves `extract_text` is
`Rejected`, with a reason the sender can act on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import Message

import lxml.html
from inscriptis import Inscriptis
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from lxml import etree

from relay.mail.parsing import MAX_TEXT, Body, Rejected

Line = tuple[str, bool]  # a line of text, and whether it is quoted (">")

MAX_PARTS = 500  # a message with more MIME parts than this is not a hand-written e-mail
# No separator, attribution, header or footer line is longer than this, so longer lines are never matched:
# each pattern call then stays short, and the worker thread that cleans a large e-mail gives the GIL back
# to the event loop within microseconds (one 200,000-character search held it for tens of milliseconds).
MAX_MARKER = 1000
CHUNK = 65536  # whole-text passes run in slices of this size, for the same reason

NO_TEXT = "the e-mail has no text to send: write the SMS text in the body, above any quoted message or signature"


def extract_text(msg: Message) -> Body:
    """The first non-attachment text/plain part, else the first text/html; cleaned; Rejected if empty or too long."""
    html_part: Message | None = None
    for part in _leaf_parts(msg):
        kind = _content_type(part)
        if kind not in ("text/plain", "text/html") or _is_attachment(part):
            continue
        if kind == "text/plain":
            raw = _decoded(part)
            # A blank plain alternative beside real HTML is a client quirk, not an empty message.
            if raw.strip():
                if _param(part, "format").lower() == "flowed":
                    lines = unflow(_newlines(raw), delsp=_param(part, "delsp").lower() == "yes")
                else:
                    lines = _plain_lines(raw)
                return _checked(Body(_new_words(lines), "text/plain"))
        elif html_part is None:
            html_part = part
    if html_part is None:
        raise Rejected(NO_TEXT)
    return _checked(Body(new_words_only(html_to_text(_decoded(html_part))), "text/html"))


def _checked(body: Body) -> Body:
    if not body.text:
        raise Rejected(NO_TEXT)
    if len(body.text) > MAX_TEXT:
        raise Rejected(
            f"the text is {len(body.text)} characters long and an SMS campaign takes at most {MAX_TEXT}: shorten it"
        )
    return body


# ---------------------------------------------------------------------------
# MIME: which part, and its text


def _leaf_parts(msg: Message) -> Iterator[Message]:
    """Leaf parts in order, depth first, without descending into attached messages (message/rfc822)."""
    stack = [msg]
    seen = 0
    while stack and seen < MAX_PARTS:
        part = stack.pop()
        seen += 1
        if not part.is_multipart():
            yield part
        elif not _content_type(part).startswith("message/"):  # an attached message is not the sender's words
            payload = part.get_payload()
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:  # noqa: BLE001 - the email package can trip on malformed headers; treat as unknown
        return "application/octet-stream"


def _is_attachment(part: Message) -> bool:
    """Disposition attachment, or any file name: Apple Mail sends attached .txt files "inline" with a name."""
    try:
        return part.get_content_disposition() == "attachment" or bool(part.get_filename())
    except Exception:  # noqa: BLE001 - unreadable disposition: not the body we want
        return True


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:  # noqa: BLE001 - a malformed parameter is an absent one
        return ""
    if isinstance(value, tuple):  # RFC 2231 (charset, language, value)
        value = value[2]
    return str(value or "").strip()


def _decoded(part: Message) -> str:
    """The part's text from its transfer encoding and charset; never raises, replaces what it cannot read."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken transfer encoding: read what is there
        data = None
    if not isinstance(data, bytes):
        data = b""
    try:
        charset = part.get_content_charset() or ""
    except Exception:  # noqa: BLE001
        charset = ""
    return decode_bytes(data, charset)


# Labels that often hide another encoding: WHATWG reads them all as windows-1252, and
# an undeclared charset is usually UTF-8.
_LOOSE = {"", "us-ascii", "ascii", "iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "unknown-8bit", "x-unknown"}


def decode_bytes(data: bytes, charset: str) -> str:
    """Decode with the declared charset; an unknown or misleading one falls back to UTF-8, then windows-1252."""
    name = charset.strip().strip('"').lower()
    if name not in _LOOSE:
        try:
            return data.decode(name, "replace")
        except (LookupError, UnicodeError, ValueError, TypeError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252" if name in _LOOSE else "utf-8", "replace")


def unflow(text: str, *, delsp: bool = False) -> list[Line]:
    """RFC 3676 format=flowed: join soft-broken lines (ending in a space) and undo space-stuffing.

    Quote depth comes from the ">" marks, not from the unstuffed text, so a
    stuffed " >90% done" stays the sender's words.
    """
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        content = stripped[1:] if stripped.startswith(" ") else stripped
        separator = content == "-- "  # the signature separator neither flows nor is joined (RFC 3676 §4.3)
        flowed = content.endswith(" ") and not separator
        if flowed and delsp:
            content = content[:-1]
        if pending is not None and pending[0] == depth and not separator:
            pending = (depth, pending[1] + content)
        else:
            if pending is not None:
                out.append(pending)
            pending = (depth, content)
        if not flowed:
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return [(_clean_chars(f"{'>' * depth} {content}" if depth else content), depth > 0) for depth, content in out]


# ---------------------------------------------------------------------------
# HTML: drop the quoted original, then inscriptis

# Quote containers the clients mark: Gmail, Apple Mail / Thunderbird (type=cite), Yahoo.
_QUOTES = etree.XPath(
    "//blockquote"
    " | //*[contains(@class, 'gmail_quote')]"
    " | //*[contains(@class, 'moz-cite-prefix')]"
    " | //*[contains(@class, 'yahoo_quoted')]"
)
# Outlook starts the original with one of these; it and everything after it go.
_OUTLOOK_START = etree.XPath("//*[@id='divRplyFwdMsg' or @id='appendonsend' or @id='x_divRplyFwdMsg']")
_BORDER_TOP = etree.XPath(
    "//div[contains(translate(@style, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ ', 'abcdefghijklmnopqrstuvwxyz'),"
    " 'border-top:solid')]"
)
# Possessive quantifiers (`*+`) never give back what they took: `\s*\*?\s*` backtracked quadratically on a
# long run of spaces (issue 14), and tests/test_regex_linear.py keeps every pattern here linear.
_HEADER_START = re.compile(r"^\s*+\*?(?:from|de|von|da|van|från|fra|od)\s*+\*?\s*+:", re.IGNORECASE)
_XML_DECLARATION = re.compile(r"^\s*+<\?xml[^>]*+>")
_CONFIG = ParserConfig(css=CSS_PROFILES["strict"])  # "relaxed" indents nested divs


def html_to_text(html: str) -> str:
    """HTML mail to text: remove quote elements and Outlook's original, then let inscriptis lay out the rest."""
    html = _XML_DECLARATION.sub("", _clean_chars(html))
    if not html.strip():
        return ""
    try:
        tree = lxml.html.document_fromstring(html)
    except (etree.LxmlError, ValueError):
        return ""
    for element in _OUTLOOK_START(tree)[:1]:
        _cut_from(element)
    for element in _BORDER_TOP(tree):
        if _marker(_HEADER_START, (element.text_content() or "")[:MAX_MARKER]):
            _cut_from(element)
            break
    for element in _QUOTES(tree):
        if element.getparent() is not None:
            element.drop_tree()  # keeps the text that follows the quote (bottom posting)
    for element in tree.iter("p"):
        if "msonormal" in (element.get("class") or "").lower():
            # Outlook writes every line as a paragraph and a blank line as one holding &nbsp;
            element.tag = "div"
            if not (element.text_content() or "").strip():
                for child in list(element):
                    element.remove(child)
                element.text = None
                element.append(etree.Element("br"))
    try:
        return Inscriptis(tree, _CONFIG).get_text()
    except (RecursionError, ValueError, etree.LxmlError):
        return ""


def _cut_from(element: etree._Element) -> None:
    """Remove `element` and everything after it in document order."""
    node = element
    while (parent := node.getparent()) is not None:
        for sibling in list(node.itersiblings()):
            parent.remove(sibling)
        node.tail = None
        node = parent
    parent = element.getparent()
    if parent is not None:
        parent.remove(element)


# ---------------------------------------------------------------------------
# Plain text: the new words only (SPEC §5 steps 3-5)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u2060\ufeff]")
_SPACES = re.compile(r"[\u00a0\u2007\u202f]")
_ORIGINAL = re.compile(
    r"^\s*+-{2,}+\s*+(?:original message|message d'origine|message d’origine|ursprüngliche nachricht|mensaje original"
    r"|messaggio originale|oorspronkelijk bericht|mensagem original)\s*+-{2,}+\s*+$",
    re.IGNORECASE,
)
_BLANK_LINES = re.compile(r"\n{3,}+")
_UNDERSCORES = re.compile(r"^\s*+_{20,}+\s*+$")
_HEADER_DATE = re.compile(
    r"^\s*+\*?(?:sent|date|envoyé|gesendet|enviado|inviato|verzonden|skickat|datum|wysłano)\s*+\*?\s*+:", re.IGNORECASE
)
_WROTE = re.compile(
    r"(?:wrote|writes|(?:a\s++)?écrit|schrieb|escribió|ha\s++scritto|schreef|skrev|kirjoitti|napisał|escreveu)\s*+:\s*+$",
    re.IGNORECASE,
)
_ATTRIBUTION_START = re.compile(r"^\s*+(?:on|le|am|el|il|op|den|em|w dniu)\s", re.IGNORECASE)
_SIGN_OFF = re.compile(
    r"^\s*+(?:(?:sent|envoyé) (?:from|de|depuis) (?:my|mon) \S++(?: \S++)?|get outlook for (?:ios|android)"
    r"|obtenir outlook pour (?:ios|android)|sent from outlook for (?:ios|android)"
    r"|envoyé de outlook pour (?:ios|android))\s*+$",
    re.IGNORECASE,
)


def new_words_only(text: str) -> str:
    """Cut at the signature or Outlook's original, drop quoted lines and their attribution, tidy blank lines."""
    return _new_words(_plain_lines(text))


def _plain_lines(text: str) -> list[Line]:
    return [(line, line.startswith(">")) for line in _clean_chars(_newlines(text)).split("\n")]


def _marker(pattern: re.Pattern[str], line: str) -> bool:
    """Whether a line short enough to be a marker starts with (`match`) the pattern."""
    return len(line) <= MAX_MARKER and pattern.match(line) is not None


def _ends_with(pattern: re.Pattern[str], line: str) -> bool:
    """Whether a line short enough to be a marker contains (`search`) the pattern."""
    return len(line) <= MAX_MARKER and pattern.search(line) is not None


def _new_words(lines: list[Line]) -> str:
    texts = _drop_quotes(_cut(lines))
    texts = [line.rstrip() for line in texts]
    _drop_trailing(texts)
    return _BLANK_LINES.sub("\n\n", "\n".join(texts)).strip("\n")


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean_chars(text: str) -> str:
    """Drop control and invisible characters; clients' non-breaking spaces become spaces (they would force UCS-2)."""
    if len(text) > CHUNK:
        return "".join(_clean_chars(text[i : i + CHUNK]) for i in range(0, len(text), CHUNK))
    return _SPACES.sub(" ", _INVISIBLE.sub("", _CONTROL.sub("", text.replace("\t", " "))))


def _cut(lines: list[Line]) -> list[Line]:
    """Everything from the signature separator, or from Outlook's original-message marker, goes."""
    for i, (line, quoted) in enumerate(lines):
        if quoted:
            continue
        if line.rstrip() == "--" or _marker(_ORIGINAL, line) or _marker(_UNDERSCORES, line):
            return lines[:i]
        if _marker(_HEADER_START, line) and any(_marker(_HEADER_DATE, nxt) for nxt, _ in lines[i + 1 : i + 4]):
            return lines[:i]  # Outlook's "From: … Sent: …" block with no separator line above it
    return lines


def _drop_quotes(lines: list[Line]) -> list[str]:
    """Quoted lines go, and with each quoted block the attribution line just above it."""
    texts = [line for line, _ in lines]
    keep = [not quoted for _, quoted in lines]
    for i, (_, quoted) in enumerate(lines):
        if quoted and (i == 0 or not lines[i - 1][1]):
            _drop_attribution(texts, keep, i)
    return [line for line, kept in zip(texts, keep, strict=True) if kept]


def _drop_attribution(lines: list[str], keep: list[bool], before: int) -> None:
    """The "On … wrote:" line above a quote (skipping blank lines), or its two halves when wrapped as Gmail does."""
    j = before - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not keep[j] or not _ends_with(_WROTE, lines[j]):
        return
    keep[j] = False
    wrapped = j > 0 and keep[j - 1] and _marker(_ATTRIBUTION_START, lines[j - 1])
    if wrapped and not _marker(_ATTRIBUTION_START, lines[j]):
        keep[j - 1] = False


def _drop_trailing(lines: list[str]) -> None:
    """An attribution left at the very end (its quote was HTML, removed) and a phone's "Sent from my iPhone" go."""
    for pattern in (_WROTE, _SIGN_OFF):
        while lines and not lines[-1]:
            lines.pop()
        if lines and _ends_with(pattern, lines[-1]):
            last = lines.pop()
            if (
                pattern is _WROTE
                and not _marker(_ATTRIBUTION_START, last)
                and lines
                and _marker(_ATTRIBUTION_START, lines[-1])
            ):
                lines.pop()
