"""relay/storage/ is the only home of SQL: no string literal elsewhere in relay/ holds a statement.

Callers pass a storage handle to functions of relay/storage/ (one module per family of tables) and never
build SQL, so a second database engine has one place to plug into.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

RELAY = Path(__file__).resolve().parent.parent / "relay"
STORAGE = RELAY / "storage"

# Upper case, as the code writes SQL; prose in docstrings and comments is not scanned.
SQL = re.compile(
    r"\b(?:SELECT\b|INSERT\s++(?:OR\s++[A-Z]++\s++)?INTO\b|UPDATE\s++\w++\s++SET\b|DELETE\s++FROM\b"
    r"|CREATE\s++(?:UNIQUE\s++)?(?:TABLE|INDEX|TRIGGER|VIEW)\b|DROP\s++(?:TABLE|INDEX|TRIGGER|VIEW)\b"
    r"|ALTER\s++TABLE\b|BEGIN(?:\s++(?:IMMEDIATE|EXCLUSIVE|DEFERRED))?+\s*+$|COMMIT\s*+$|ROLLBACK\b|SAVEPOINT\b"
    r"|RELEASE\s++\w++\s*+$|PRAGMA\b)"
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def sql_outside_storage() -> list[str]:
    found = []
    for path in sorted(RELAY.rglob("*.py")):
        if STORAGE in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, joined
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            else:
                continue
            if SQL.search(text):
                found.append(f"{path.relative_to(RELAY.parent)}:{node.lineno}: {text.strip()[:80]!r}")
    return found


def test_no_sql_string_outside_relay_storage():
    assert sql_outside_storage() == []


def test_the_scan_finds_sql_where_it_would_be():
    """The scan itself works: each form of statement the code uses is caught, prose is not."""
    for statement in [
        "SELECT id FROM outbox WHERE status = 'pending'",
        "INSERT OR IGNORE INTO optouts (number) VALUES (?)",
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        "UPDATE sends SET status = 'pending' WHERE id = ?",
        "DELETE FROM meta WHERE key = ?",
        "CREATE INDEX IF NOT EXISTS idx ON callbacks (id)",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "ROLLBACK TO job",
        "PRAGMA busy_timeout = 0",
    ]:
        assert SQL.search(statement), statement
    for prose in ["Select a country", "the COMMIT (the fsync) goes to the writer thread", "updated at"]:
        assert not SQL.search(prose), prose


def test_storage_never_calls_up_into_routing_or_the_listeners():
    """Storage is the bottom layer: it records what notify.py and sending.py decide, and imports neither."""
    above = ("relay.notify", "relay.sending", "relay.daemon", "relay.cli", "relay.web", "relay.mail", "relay.scheduler")
    found = []
    for path in sorted(STORAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert found == []
