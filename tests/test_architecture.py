"""The shape of the code: components get narrow handles, never the daemon (STYLE.md "Components get only what
they use"); the import layers themselves are checked by `lint-imports` (.importlinter, run by .ci/run)."""

from __future__ import annotations

import ast
from pathlib import Path

RELAY = Path(__file__).resolve().parent.parent / "relay"
MAY_KNOW_THE_DAEMON = {"daemon.py", "cli.py"}


def imports_of(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from M import N` and (module, "") for every `import M`, at any depth
    (inside functions and `if TYPE_CHECKING:` blocks too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def test_no_module_but_the_daemon_and_the_cli_imports_the_daemon():
    offenders = []
    for path in sorted(RELAY.rglob("*.py")):
        if path.relative_to(RELAY).as_posix() in MAY_KNOW_THE_DAEMON:
            continue
        for module, name in imports_of(path):
            if module == "relay.daemon" or (module == "relay" and name == "daemon") or name == "Daemon":
                offenders.append(f"{path.relative_to(RELAY.parent)}: {module} {name}".strip())
    assert not offenders, "components get narrow handles, not the daemon:\n" + "\n".join(offenders)


def test_the_check_sees_an_import_of_the_daemon(tmp_path):
    """The scan above would catch each form of the import."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.daemon import Daemon\n"
        "def f():\n    import relay.daemon\n    from relay import daemon\n",
        encoding="utf-8",
    )
    found = imports_of(sample)
    assert ("relay.daemon", "Daemon") in found and ("relay.daemon", "") in found and ("relay", "daemon") in found
