"""Password hashes for SMTP AUTH and web users: scrypt or PBKDF2 from the standard library.

Format `scrypt$n$r$p$salt$hash` or `pbkdf2_sha256$iterations$salt$hash` (base64);
the plain password is never stored. Verification is constant-time.
"""

import base64
import hashlib
import hmac
import os


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def make_hash(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def is_hash(value: str) -> bool:
    parts = value.split("$")
    return (parts[0] == "scrypt" and len(parts) == 6) or (parts[0] == "pbkdf2_sha256" and len(parts) == 4)


def verify(password: str, hashed: str) -> bool:
    """True when `password` matches `hashed`; False for any malformed hash."""
    try:
        parts = hashed.split("$")
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            salt, expected = _unb64(parts[4]), _unb64(parts[5])
            got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected))
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            salt, expected = parts[2].encode(), _unb64(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]), len(expected))
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)
