"""Password hashes for SMTP AUTH and web users: scrypt or PBKDF2 (standard library), or Argon2.

Ours are `scrypt$n$r$p$salt$hash` (what `octorelay hash-password` makes); Django's
`pbkdf2_sha256$iterations$salt$hash` and Argon2's PHC strings (`$argon2id$v=19$m=...`, as
argon2-cffi, libsodium or the `argon2` tool write them) are accepted too. The plain password is
never stored. Verification is constant-time.
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
    if value.startswith("$argon2"):
        import argon2  # only when a hash is Argon2: the daemon's idle memory is a target

        try:
            argon2.extract_parameters(value)
        except argon2.exceptions.InvalidHashError:
            return False
        return True
    parts = value.split("$")
    return (parts[0] == "scrypt" and len(parts) == 6) or (parts[0] == "pbkdf2_sha256" and len(parts) == 4)


def verify(password: str, hashed: str) -> bool:
    """True when `password` matches `hashed`; False for any malformed hash."""
    if hashed.startswith("$argon2"):
        import argon2

        try:
            return argon2.PasswordHasher().verify(hashed, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False  # a mismatch, or a hash it cannot read
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
