"""The SMS text of an e-mail: the first text part's new words, without quotes, signatures or forwarded originals.

SPEC §5 steps 1-5. Mail from real clients is messy (wrong charsets, broken
base64, missing boundaries), so every read here degrades to "no text"
rather than raising: the only exception that leaves `extract_text` is
`Rejected`, with a reason the sender can act on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

from inscriptis import Inscriptis
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from lxml import etree

from relay.errors import Rejected
from relay.mail import reply_words as words
from relay.octopush.rules import MAX_TEXT


@dataclass(frozen=True)
class Body:
    """The SMS text taken from an e-mail, and which part it came from."""

    text: str  # the new words only, ready to send
    source: str  # "text/plain" or "text/html"
    trimmed: bool = False  # the clean-up left out lines the e-mail held (a quote, a signature, a footer)


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
                text, trimmed = _new_words(lines)
                return _checked(Body(text, "text/plain", trimmed))
        elif html_part is None:
            html_part = part
    if html_part is None:
        raise Rejected(NO_TEXT)
    html_text, cut = _html_text(_decoded(html_part))
    text, trimmed = _new_words(_plain_lines(html_text))
    return _checked(Body(text, "text/html", trimmed or cut))


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

# Quote containers the clients mark (any element whose class holds one of these, and every blockquote):
# Gmail, Thunderbird, Yahoo, Zoho, Proton, AOL.
_QUOTE_CLASSES = (
    "gmail_quote",
    "gmail_attr",
    "moz-cite-prefix",
    "yahoo_quoted",
    "zmail_extra",
    "protonmail_quote",
    "aolReplyQuote",
)
# These start the original (Outlook desktop and web, new Outlook, Hotmail, Zimbra, Thunderbird's forward): it and
# everything after it go.
_START_IDS = frozenset(
    {
        "divRplyFwdMsg",
        "x_divRplyFwdMsg",
        "appendonsend",
        "x_appendonsend",
        "mail-editor-reference-message-container",
        "stopSpelling",
        "zwchr",  # Zimbra
        "OLK_SRC_BODY_SECTION",  # Outlook for Mac 2011
    }
)
_START_CLASSES = ("OutlookMessageHeader", "moz-forward-container")
_WHITESPACE = re.compile(r"\s++")
_LINE_EDGES = re.compile(r"(?<! ) *+\n *+")  # starts only at a run's first space: linear
_MARKED = etree.XPath("//blockquote | //*[@id or @class or @style or @name]")
_MSO_PARAGRAPHS = etree.XPath("//p[@class]")
_BREAK = "\ue000"  # a private-use character: _clean_chars removes it from the mail's own text
_HTML_PARSER = etree.HTMLParser(remove_comments=True, remove_pis=True)
MAX_LAYOUT = 3000  # elements inscriptis lays out (about 30 ms); a larger tree gets _plain_layout
_BLOCKS = (
    "p",
    "div",
    "li",
    "tr",
    "table",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "pre",
    "blockquote",
    "section",
    "article",
    "header",
    "footer",
    "address",
    "center",
    "form",
    "fieldset",
    "body",
)
_XML_DECLARATION = re.compile(r"^\s*+<\?xml[^>]*+>")
_CONFIG = ParserConfig(css=CSS_PROFILES["strict"])  # "relaxed" indents nested divs


def html_to_text(html: str) -> str:
    """HTML mail to text: remove quote elements and Outlook's original, then let inscriptis lay out the rest."""
    return _html_text(html)[0]


def _html_text(html: str) -> tuple[str, bool]:
    """The text of an HTML part, and whether a quote or an original message was removed from it."""
    html = _XML_DECLARATION.sub("", _clean_chars(html))
    if not html.strip():
        return "", False
    try:
        # lxml.etree's own HTML parser: lxml.html's element classes cost a Python call per element
        tree = etree.fromstring(html, _HTML_PARSER)
    except (etree.LxmlError, ValueError):
        return "", False
    if tree is None:
        return "", False
    root = tree.getroottree().getroot()
    start, border_tops, quotes = _structure(tree)
    cut = start is not None
    if start is not None:
        _cut_from(start)
    for element in border_tops:
        if element.getroottree().getroot() is root and _header(_first_line(element)) is not None:
            _cut_from(element)
            cut = True
            break
    for element in quotes:
        parent = element.getparent()
        if parent is None or element.getroottree().getroot() is not root or _is_indent(element):
            continue
        # A ">" line stands where the quote was: the text rules then see an attribution above a quote
        # (and drop it) rather than one above the sender's bottom-posted words (which they would cut).
        marker = etree.Element("div")
        marker.text, marker.tail = ">", element.tail
        parent.replace(element, marker)
        cut = True
    for element in tree.iter("div"):
        if len(element) == 0 and element.text and not element.text.strip():
            element.text = None  # a webmail's blank line, <div>&nbsp;</div>, stays a blank line
            element.append(etree.Element("br"))
    for element in _MSO_PARAGRAPHS(tree):
        if "msonormal" in (element.get("class") or "").lower():
            # Outlook writes every line as a paragraph and a blank line as one holding &nbsp;
            element.tag = "div"
            if not "".join(element.itertext()).strip():
                for child in list(element):
                    element.remove(child)
                element.text = None
                element.append(etree.Element("br"))
    if sum(1 for _ in tree.iter()) > MAX_LAYOUT:
        return _plain_layout(tree), cut
    try:
        return Inscriptis(tree, _CONFIG).get_text(), cut
    except (RecursionError, ValueError, etree.LxmlError):
        return "", cut


def _structure(tree: etree._Element) -> tuple[etree._Element | None, list, list]:
    """One pass over the elements (XPath unions cost a traversal each): where Outlook's original starts,
    the divs with only a top border (Outlook, Windows Mail), and the quote containers."""
    start = None
    border_tops, quotes = [], []
    for element in _MARKED(tree):  # a traversal in C; Python sees only elements with attributes
        if element.tag == "blockquote":
            quotes.append(element)
        ident, cls, style = element.get("id"), element.get("class"), element.get("style")
        if start is None and (ident in _START_IDS or (cls and any(name in cls for name in _START_CLASSES))):
            start = element
        if element.tag != "blockquote" and (
            (cls and any(name in cls for name in _QUOTE_CLASSES)) or element.get("name") == "quote"  # GMX, web.de
        ):
            quotes.append(element)
        if style and element.tag == "div" and "border-top" in style.lower():
            flat = style.replace(" ", "").lower()
            if "border-top:solid" in flat or "border-top-style:solid" in flat:
                border_tops.append(element)
    return start, border_tops, quotes


def _first_line(element: etree._Element) -> str:
    """The first non-blank line of an element's text, read lazily: text_content() of nested divs is quadratic."""
    for i, chunk in enumerate(element.itertext()):
        head = chunk.lstrip()[:MAX_MARKER]
        if head or i > 20:
            return head.split("\n", 1)[0]
    return ""


def _plain_layout(tree: etree._Element) -> str:
    """Text of an HTML tree with a line per block and <br>, for trees too large for inscriptis to lay out fast.

    inscriptis spends about 10 µs per element: 100 KB of <br> would take a quarter of a second. No hand-written
    message has this many elements left once the quote is gone; this keeps a crafted one linear and cheap.
    """
    for element in tree.iter(etree.Comment, etree.ProcessingInstruction, "script", "style", "head", "title"):
        element.text = None
        for child in list(element):
            element.remove(child)
    # Breaks are marked with U+E000 (_clean_chars removed it from the mail), the source's own
    # whitespace collapses as HTML does, then the marks become the lines.
    for element in tree.iter(*_BLOCKS):
        element.text = _BREAK + (element.text or "")
        element.tail = _BREAK + (element.tail or "")
    for element in tree.iter("br"):
        element.tail = _BREAK + (element.tail or "")
    text = _WHITESPACE.sub(" ", etree.tostring(tree, method="text", encoding="unicode")).replace(_BREAK, "\n")
    return _LINE_EDGES.sub("\n", text)


def _is_indent(element: etree._Element) -> bool:
    """Gmail's "Indent more" is a blockquote too, but with no border and no quote class: the sender's words."""
    style = (element.get("style") or "").replace(" ", "").lower()
    return (
        element.tag == "blockquote"
        and "border:none" in style
        and element.get("type") != "cite"
        and "quote" not in (element.get("class") or "")
    )


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
#
# Every marker below is recognised with plain string operations on one line (or an attribution's two or
# three lines) no longer than MAX_MARKER, against the word lists of relay.mail.reply_words: a line costs
# the same whatever it holds, so the whole pass is linear in the message's size.
#
# The order of the rules is what keeps the sender's words:
# 1. cut (everything from here goes): the signature separator, an original/forwarded-message separator,
#    a mobile footer, a header block ("From: … / Sent: …" in any language), or an attribution line that
#    the earlier message follows without ">" (a top-posted reply);
# 2. quoted lines go, with the continuations the sender's client broke off a long quoted line, and the
#    attribution above each quoted block; unquoted lines between quotes are the sender's inline answers
#    and stay;
# 3. an attribution, footer or dashed line left at the very end goes (the quote was HTML, removed).

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060\ue000\ufeff]")
_SPACES = re.compile(r"[\u00a0\u2007\u202f]")
_BLANK_LINES = re.compile(r"\n{3,}+")
_BLANK_RUN = re.compile(r"\n(?: *+\n)++")

_FENCE = frozenset("-_=*~")  # the characters of a dashed line above a header block
_FENCE_START = frozenset("-_=*")  # a separator line starts with one of these, or ends with a colon
_FOOTER_STARTS = (*words.FOOTER_PREFIXES, *(head for head, _ in words.FOOTER_AROUND))
_FOOTER_FIRST = frozenset(prefix[0] for prefix in _FOOTER_STARTS)
_FOOTER_HEADS = frozenset(prefix[:4] for prefix in _FOOTER_STARTS)
_HEADER_SPAN = words.LONGEST_HEADER + 8  # where a header line's colon can be (after "*" and spaces)
_CJK = "\u2e80"  # verbs in scripts from here on are not separated from the name by a space
_STARTS = tuple(word + end for word in words.ATTRIBUTION_STARTS for end in " ,")
_INNER_VERBS = tuple(f" {verb} " for verb in words.WRITE_VERBS if verb[0] < _CJK)
_DIGIT = re.compile(r"\d")
_VERB_SET = frozenset(words.WRITE_VERBS)
_VERB_SIZES = sorted({len(verb) for verb in words.WRITE_VERBS}, reverse=True)
_LONGEST_START = max(len(start) for start in _STARTS)
_VERB_ENDS = frozenset(verb[-2:] for verb in words.WRITE_VERBS)
_LONGEST_VERB = max(len(verb) for verb in words.WRITE_VERBS) + 1
_SENTENCE_END = (".", "!", "?", "。", "！", "？")
_WRAP = 72  # the width most clients wrap quoted lines at (RFC 3676 suggests 78 at most)


def new_words_only(text: str) -> str:
    """Cut at the signature or an earlier message's marker, drop quoted lines and their attribution, tidy."""
    return _new_words(_plain_lines(text))[0]


def _plain_lines(text: str) -> list[Line]:
    # Runs of blank lines become one (step 5 would anyway): the rules then read only lines with words.
    text = _BLANK_RUN.sub("\n\n", _clean_chars(_newlines(text)))
    return [(line, line.startswith(">")) for line in text.split("\n")]


def _new_words(lines: list[Line]) -> tuple[str, bool]:
    """The new words, and whether a line with words in it was left out (shown in the confirmation)."""
    texts = [line for line, _ in lines]
    written = sum(1 for line in texts if line.strip())
    quoted = [is_quoted for _, is_quoted in lines]
    end = _cut_point(texts, quoted)
    texts, quoted = texts[:end], quoted[:end]
    _mark_rewrapped(texts, quoted)
    kept = _drop_quotes(texts, quoted)
    kept = [line.rstrip() for line in kept]
    _drop_trailing(kept)
    trimmed = sum(1 for line in kept if line) < written
    return _BLANK_LINES.sub("\n\n", "\n".join(kept)).strip("\n"), trimmed


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _clean_chars(text: str) -> str:
    """Drop control and invisible characters; clients' non-breaking spaces become spaces (they would force UCS-2)."""
    if len(text) > CHUNK:
        return "".join(_clean_chars(text[i : i + CHUNK]) for i in range(0, len(text), CHUNK))
    return _SPACES.sub(" ", _INVISIBLE.sub("", _CONTROL.sub("", text.replace("\t", " "))))


# --- one line at a time


def _is_separator(line: str) -> bool:
    """Outlook's underscores, "-----Original Message-----" and its translations, "Begin forwarded message:"."""
    s = line.strip()
    if not s or len(line) > MAX_MARKER or (s[0] not in _FENCE_START and s[-1] not in ":："):
        return False
    s = s.lower()
    if len(s) >= 20 and s.strip("_") == "":
        return True
    core = s.strip("-=_* ").rstrip(" :").replace("\u0307", "")  # Turkish "İ" lower-cases to "i" + a dot
    fenced = len(s) - len(s.lstrip("-=_")) >= 2
    return (fenced and core in words.SEPARATOR_PHRASES) or core in words.FORWARD_INTROS


def _is_fence(line: str) -> bool:
    s = line.strip()
    return 3 <= len(s) <= MAX_MARKER and set(s) <= _FENCE


def _is_footer(line: str) -> bool:
    """A phone's "Sent from my iPhone", "Get Outlook for Android<https://aka.ms/…>", in any language."""
    s = line.strip()
    if not s or len(s) > 2 * words.MAX_FOOTER or s[0].lower() not in _FOOTER_FIRST:
        return False
    s = s.lower()
    if s.endswith(">") and "<" in s:  # Outlook mobile's link after the words
        s = s[: s.rfind("<")].rstrip()
    if len(s) > words.MAX_FOOTER:
        return False
    return s.startswith(words.FOOTER_PREFIXES) or any(
        s.startswith(head) and s.endswith(tail) for head, tail in words.FOOTER_AROUND
    )


def _header(line: str) -> tuple[str, str] | None:
    """(kind, value) of a header line ("From: x", "De : x", "*Sent:* x", "发件人: x"), else None."""
    if len(line) > MAX_MARKER:
        return None
    s = line.lstrip(" *")
    head = s[: words.LONGEST_HEADER + 4]
    colon = head.find(":")
    wide = head.find("：")
    if wide > 0 and (colon < 0 or wide < colon):
        colon = wide
    if colon <= 0:
        return None
    kind = words.HEADER_NAMES.get(head[:colon].strip(" *").lower())
    return (kind, s[colon + 1 :].strip(" *")) if kind else None


def _header_block_at(texts: list[str], quoted: list[bool], i: int) -> tuple[bool, int]:
    """Whether a forwarded/original header block starts at line i (From or Date with other headers under it),
    and the line after the run of header lines read, so that a caller never reads the same run twice.

    A lone "From: the ops team" is the sender's; so is an itinerary's "From: Paris / To: Lyon / Date: Monday":
    a block needs an address on its From line, a To and a Date with digits beside it, or a Subject and a Date.
    """
    kinds: list[str] = []
    address = dated = False
    j = i
    blanks = 0
    while j < len(texts) and len(kinds) < 8:
        if quoted[j]:
            break
        if not texts[j].strip():
            blanks += 1
            if blanks > 1 or not kinds:
                break
            j += 1
            continue
        found = _header(texts[j])
        if found is None:
            break
        kind, value = found
        kinds.append(kind)
        if kind == "from" and ("@" in value or "<" in value or "[" in value):
            address = True
        if kind == "date" and _DIGIT.search(value):
            dated = True
        blanks = 0
        j += 1
    distinct = set(kinds)
    if len(kinds) < 2 or len(distinct) < 2:
        return False, j
    if "from" in distinct and (address or (dated and "to" in distinct)):
        return True, j  # Windows Mail, Outlook with a link: "From: Name / Sent: <date> / To: Name"
    return {"date", "subject"} <= distinct and ("from" in distinct or "to" in distinct), j


# --- attribution lines


def _ends_with_verb(body: str) -> bool:
    """Whether `body` (folded, without the final colon) ends with a verb of writing, as a word of its own."""
    for size in _VERB_SIZES:
        verb = body[-size:]
        if verb in _VERB_SET:
            before = body[:-size]
            if not before or verb[0] >= _CJK or not (before[-1].isalnum() or before[-1] in "-/_.'"):
                return True
    return False


def _starts_attribution(line: str) -> bool:
    return line.lstrip(" -=")[:_LONGEST_START].lower().startswith(_STARTS)


def _strength(joined: str) -> int:
    """0: not an attribution; 1: it reads like one ("John wrote:"); 2: it is one (with a date or an address).

    Only a strong one is cut with the unquoted text under it; a weak one goes only above a ">" quote.
    """
    s = joined.strip().lower()
    zoho = s.startswith("--") and s.endswith("--")  # Zoho: "---- On … wrote ----"
    s = s.strip("-= ")
    colon = s.endswith((":", "："))
    body = s.rstrip(" :：")
    at = "@" in s
    digit = _DIGIT.search(s) is not None
    starts = s.startswith(_STARTS)
    if _ends_with_verb(body):
        if not (at or digit):
            return 1
        return 2 if colon or zoho or starts else 1
    if not colon or not digit:
        return 0
    if at and body.endswith((">", ")")):
        return 2  # Gmail in Japanese, Russian, German…: "<date> John <j@x.org>:", "… schrieb John <j@x.org>:"
    if any(verb in body for verb in _INNER_VERBS):
        # Thunderbird "Am 12.01.26 um 09:41 schrieb John Doe:", Apple "John <j@x> kirjoitti 12.1.2026 kello 9.41:"
        return 2 if starts or at else 1
    return 0


def _could_end_attribution(line: str) -> bool:
    """Cheap first test: a line that ends with a colon, a dash (Zoho) or a verb of writing."""
    if len(line) > MAX_MARKER:
        return False
    s = line.rstrip().rstrip(" -=")
    return bool(s) and (s[-1] in ":：" or s[-_LONGEST_VERB:].lower().endswith(words.WRITE_VERBS))


def _attribution(texts: list[str], quoted: list[bool], i: int) -> tuple[int, int]:
    """(first line, strength) of an attribution ending at line i, over one to three lines as clients wrap it."""
    line = texts[i]
    if quoted[i] or not _could_end_attribution(line):
        return i, 0
    start = i
    if not _starts_attribution(line):
        # Wrapped: the first line opens with "On"/"Le"/"Am"…, or breaks inside the name and address, or the
        # last line is the verb alone ("wrote:", "kirjoitti:", "şunu yazdı:").
        verb_only = len(line) <= _LONGEST_VERB + 8 and line.strip().rstrip(" :：").lower() in _VERB_SET
        # A short last line ("09:41写道：", "napisał(a):") under a line holding the address is wrapped too.
        short_tail = len(line.strip()) <= 30 and i > 0 and "@" in texts[i - 1]
        for k in (i - 1, i - 2):
            above = texts[k].rstrip() if k >= 0 and not quoted[k] and len(texts[k]) <= MAX_MARKER else ""
            if not above.strip() or above.endswith(_SENTENCE_END):
                break
            if _starts_attribution(texts[k]):
                start = k
                break
            broken = above.endswith(("<", "(")) or (
                # "Thanks :)" and "Best regards," end so too: only with a date or an address in them
                above.endswith((">", ")", ",")) and ("@" in above or _DIGIT.search(above) is not None)
            )
            if broken or ((verb_only or short_tail) and k == i - 1):
                start = k
    joined = " ".join(part.strip() for part in texts[start : i + 1])
    strength = _strength(joined) if len(joined) <= MAX_MARKER else 0
    if strength == 0 and start < i:
        start, strength = i, _strength(line)
    return start, strength


# --- the passes


def _cut_point(texts: list[str], quoted: list[bool]) -> int:
    """Index of the first line of the earlier message (or signature), len(texts) when there is none."""
    n = len(texts)
    headers_read = 0
    for i, line in enumerate(texts):
        if quoted[i]:
            continue
        s = line.strip()
        if not s or len(s) > MAX_MARKER:
            continue
        # Cheap tests on the line's ends first: most lines are plain words and get no further.
        first, last = s[0], s[-1]
        if s == "--" or ((first in _FENCE_START or last in ":：") and _is_separator(line)):
            return i
        if s[:4].lower() in _FOOTER_HEADS and _is_footer(line):
            return i
        if i >= headers_read and (":" in s[:_HEADER_SPAN] or "：" in s[:_HEADER_SPAN]) and _header(line):
            block, headers_read = _header_block_at(texts, quoted, i)
            if block:
                return _with_fence_above(texts, quoted, i)
        if last not in ":：-=" and not (
            s[-2:].lower() in _VERB_ENDS and s[-_LONGEST_VERB:].lower().endswith(words.WRITE_VERBS)
        ):
            continue
        following = next((j for j in range(i + 1, n) if texts[j].strip()), None)
        if following is not None and (quoted[following] or not _may_be_strong(texts, i, last)):
            continue  # above a quote it is _drop_quotes' business; above words only a strong one cuts them
        start, strength = _attribution(texts, quoted, i)
        if strength and (following is None or (strength == 2 and not quoted[following])):
            return start  # the earlier message follows without ">" (or was HTML, already removed)
    return n


def _may_be_strong(texts: list[str], i: int, last: str) -> bool:
    """Cheap necessary conditions of a strong attribution ending at line i: a digit or an "@" (its date or
    address) in it or the two lines above, and a final colon, Zoho's dashes or an opening word."""
    window = [line for line in texts[max(0, i - 2) : i + 1] if len(line) <= MAX_MARKER]
    if not any("@" in line or _DIGIT.search(line) for line in window):
        return False
    return last in ":：-" or any(_starts_attribution(line) for line in window)


def _with_fence_above(texts: list[str], quoted: list[bool], i: int) -> int:
    """Outlook's dashed line (or a webmail's "====") just above a header block goes with it."""
    j = i - 1
    while j >= 0 and not quoted[j] and not texts[j].strip():
        j -= 1
    return j if j >= 0 and not quoted[j] and _is_fence(texts[j]) else i


def _mark_rewrapped(texts: list[str], quoted: list[bool]) -> None:
    """A quoted line the sender's client re-wrapped leaves its end on the next line without ">": it is quoted too.

    Only a short piece right under a long quoted line that it continues (the line had no room for its
    first word, and did not end a sentence), followed by more quote or, starting lower-case, by nothing.
    """
    n = len(texts)
    last = max((j for j in range(n) if texts[j].strip()), default=-1)
    for i in range(1, n):
        if quoted[i] or not quoted[i - 1]:
            continue
        line, above = texts[i].strip(), texts[i - 1].rstrip()
        if not line or len(line) > _WRAP or len(above) > MAX_MARKER or above.endswith(_SENTENCE_END + (":",)):
            continue
        first_word = line.split(" ", 1)[0]
        if len(above) < 50 or len(above) + 1 + len(first_word) < _WRAP:
            continue
        # At the very end, only under a line that filled the width: a short lower-case answer ("ok, done")
        # right under a quoted line is the sender's.
        if (i + 1 < n and quoted[i + 1]) or (i == last and line[0].islower() and len(above) >= _WRAP - 2):
            quoted[i] = True


def _drop_quotes(texts: list[str], quoted: list[bool]) -> list[str]:
    """Quoted lines go, and with each quoted block the attribution just above it (skipping blank lines)."""
    keep = [not q for q in quoted]
    for i in range(len(texts)):
        if quoted[i] and (i == 0 or not quoted[i - 1]):
            j = i - 1
            while j >= 0 and not quoted[j] and not texts[j].strip():
                j -= 1
            if j >= 0 and keep[j]:
                start, strength = _attribution(texts, quoted, j)
                if strength and all(keep[start : j + 1]):
                    for k in range(start, j + 1):
                        keep[k] = False
    return [line for line, kept in zip(texts, keep, strict=True) if kept]


def _drop_trailing(lines: list[str]) -> None:
    """An attribution, a phone's footer or a dashed line left at the very end goes (the quote was HTML).

    A few of them at most (one attribution): a run of such lines is the sender's, not a client's.
    """
    unquoted = [False] * len(lines)
    for _ in range(4):
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            return
        last = len(lines) - 1
        if _is_footer(lines[last]) or _is_fence(lines[last]):
            lines.pop()
            continue
        start, strength = _attribution(lines, unquoted, last)
        if not strength:
            return
        del lines[start:]  # one attribution only, and the footer or dashed line just above it
        while lines and not lines[-1].strip():
            lines.pop()
        if lines and (_is_footer(lines[-1]) or _is_fence(lines[-1])):
            lines.pop()
        return
