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


def test_every_module_of_relay_sits_in_a_layer_of_the_import_contract():
    """A new module outside every layer would escape `lint-imports`: name it in pyproject.toml's contract."""
    import tomllib

    contract = tomllib.loads((RELAY.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c for c in contract["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    missing = []
    for path in sorted(RELAY.rglob("*.py")):
        parts = ["relay", *path.relative_to(RELAY).with_suffix("").parts]
        if parts[-1] == "__init__":
            continue
        if not any(".".join(parts[:i]) in named for i in range(2, len(parts) + 1)):
            missing.append(".".join(parts))
    assert not missing, f"not in any layer of [tool.importlinter]: {missing}"


def test_mail_and_web_templates_come_from_one_factory_whose_filters_mean_one_thing():
    from relay import templating
    from relay.mail.render import Renderer
    from relay.web import views

    mail, web = Renderer().env, views.make_env()
    for name, helper in templating.FILTERS.items():
        assert mail.filters[name] is helper and web.filters[name] is helper, name
    assert templating.country_name("+33612345678") == "France"  # a number
    assert templating.country_name_iso("FR") == templating.country_label("FR") == "France"  # an ISO code
    assert templating.country_label("") == "Unknown country"
    # HTML is escaped in web pages and in the HTML part of e-mails, not in the text part.
    assert web.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    assert mail.get_template("mail/_macros.html").environment.autoescape("x.html")
    assert not mail.autoescape("x.txt")


def test_the_import_contract_holds():
    """The same check as .ci/run's `lint-imports`, so a cycle or an upward import also fails the tests."""
    import shutil
    import subprocess
    import sys

    import pytest

    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    result = subprocess.run([command], cwd=RELAY.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_web_templates_link_by_route_name():
    """Pages link and post through `url(name)` (relay/web/routes.py), so no address is written twice."""
    import re

    templates = RELAY.parent / "templates" / "web"
    written = [
        f"{path.name}: {m.group(0)}"
        for path in sorted(templates.glob("*.html"))
        for m in re.finditer(r"""(?:href|action|src)="/[^"]*\"""", path.read_text(encoding="utf-8"))
    ]
    assert not written, written
