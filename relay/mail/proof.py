"""Sender proof without a login (`sender_check = "dkim"`, SPEC §5 "Who sends").

The header `From` is the sender when a DKIM signature that verifies (dkimpy) comes
from its domain, aligned as DMARC's relaxed mode does (the same organisational
domain, from the Public Suffix List), or when the MTA named by
`trusted_authserv_id` says `dkim=pass` or `dmarc=pass` for that domain in an
`Authentication-Results` header (parsed with authres). Headers from any other
authserv-id are ignored: the trusted MTA removes forged ones with its own id
(RFC 8601 §5). Verification makes DNS queries and RSA checks: callers run it
in a worker thread, off the event loop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from email.message import Message

from relay.config import Listen, SmtpIn
from relay.errors import RelayError
from relay.mail.parsing import header_text, parse_message, sender_glob_allows

log = logging.getLogger("relay.smtp")
DNS_TIMEOUT = 5.0
MAX_SIGNATURES = 5  # each costs DNS queries: a message carrying dozens is not worth them all


class NotProven(RelayError):
    """The message does not prove its header From (SMTP 550 5.7.1 naming what was missing)."""


def from_address(msg: Message) -> str:
    from email.utils import getaddresses

    pairs = getaddresses([header_text(msg, "From")])
    return pairs[0][1].strip().lower() if len(pairs) == 1 and "@" in pairs[0][1] else ""


@functools.lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def organisational_domain(domain: str) -> str:
    """`mail.example.co.uk` → `example.co.uk` (DMARC's organisational domain)."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return _psl().privatesuffix(domain) or domain
    except Exception:  # noqa: BLE001 - a name the list cannot read is its own organisational domain
        return domain


def aligned(signer: str, author: str) -> bool:
    """DMARC relaxed alignment: the signing domain and the From domain share their organisational domain."""
    return bool(signer) and organisational_domain(signer) == organisational_domain(author)


def txt_lookup(resolver: Listen | None) -> Callable[..., bytes | None]:
    """dkimpy's DNS function: through `resolver` (host:port) when set, else the system's resolver."""
    import dkim.dnsplug

    if resolver is None:
        return dkim.dnsplug.get_txt
    import dns.exception
    import dns.resolver

    client = dns.resolver.Resolver(configure=False)
    client.nameservers = [resolver.host]
    client.port = resolver.port

    def get_txt(name: bytes, timeout: float = DNS_TIMEOUT) -> bytes | None:
        try:
            answer = client.resolve(name.decode("ascii"), "TXT", lifetime=timeout, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, UnicodeDecodeError):
            return None
        except dns.exception.Timeout as exc:
            import dkim

            raise dkim.DnsTimeoutError(f"DNS timeout asking {resolver}: {exc}") from None
        for rrset in answer.response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(next(iter(rrset)).strings)
        return None

    return get_txt


def prove(data: bytes, cfg: SmtpIn) -> str:
    """The proven header From address; NotProven with the reason otherwise. Blocking: run it in a thread."""
    msg = parse_message(data)
    author = from_address(msg)
    if not author:
        raise NotProven("sender not proven: the message needs exactly one From address")
    if not sender_glob_allows(cfg.allowed_senders, author):
        raise NotProven(f"sender not proven: From {author} is not an allowed sender")
    domain = author.rpartition("@")[2]
    if cfg.trusted_authserv_id and _trusted_verdict(msg, cfg.trusted_authserv_id, domain):
        return author
    signers = _verified_signers(data, msg, txt_lookup(cfg.resolver))
    if any(aligned(signer, domain) for signer in signers):
        return author
    if signers:
        raise NotProven(
            f"sender not proven: the DKIM signature is from {', '.join(signers)}, not from {domain} (header From)"
        )
    raise NotProven(f"sender not proven: no valid DKIM signature from {domain} (header From {author})")


def _trusted_verdict(msg: Message, authserv_id: str, domain: str) -> bool:
    """dkim=pass (header.d) or dmarc=pass (header.from) aligned with `domain`, from the trusted MTA only."""
    import authres

    for name, value in msg.raw_items():
        if name.strip().lower() != "authentication-results":
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse_value(" ".join(str(value).split()))
        except Exception:  # noqa: BLE001 - a header authres cannot read proves nothing
            continue
        if (header.authserv_id or "").lower() != authserv_id.lower():
            continue  # anyone can write an Authentication-Results header: only the trusted MTA's count
        for result in header.results:
            if (result.method or "").lower() not in ("dkim", "dmarc") or (result.result or "").lower() != "pass":
                continue
            wanted = "d" if result.method.lower() == "dkim" else "from"
            for prop in result.properties:
                named = (prop.type or "").lower() == "header" and (prop.name or "").lower() == wanted
                if named and aligned(str(prop.value).rpartition("@")[2], domain):
                    return True
    return False


def _verified_signers(data: bytes, msg: Message, dnsfunc) -> list[str]:
    """The domains of the DKIM signatures that verify."""
    import dkim

    count = sum(1 for name, _ in msg.raw_items() if name.strip().lower() == "dkim-signature")
    signers = []
    for index in range(min(count, MAX_SIGNATURES)):
        try:
            checker = dkim.DKIM(data, minkey=1024, timeout=DNS_TIMEOUT)
            ok = checker.verify(idx=index, dnsfunc=dnsfunc)
        except Exception as exc:  # noqa: BLE001 - dkimpy raises many kinds on hostile input: not verified
            log.info("DKIM signature %d not verified: %s", index, exc)
            continue
        if ok and checker.domain:
            signers.append(checker.domain.decode("ascii", "replace").lower())
        elif not ok:
            log.info("DKIM signature %d does not verify", index)
    return signers
