"""Configuration: defaults, merging, and every refusal naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay import config as config_mod
from relay.cli import main
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def load_text(tmp_path: Path, text: str, env: dict | None = None):
    path = tmp_path / "octorelay.toml"
    path.write_text(text)
    return config_mod.load(path, env=env or {})


def test_defaults_are_the_offline_demo():
    c = config_mod.load(env={})
    assert c.octopush.mode == "emulator"
    assert str(c.http.listen) == "127.0.0.1:8080" and str(c.smtp_in.listen) == "127.0.0.1:2525"
    assert c.smtp_out.transport == "maildir" and c.smtp_out.maildir.name == "mail"
    assert c.storage.path.name == "octorelay.db" and c.storage.path.parent.name == "var"


def test_example_file_is_the_default_file():
    packaged = (ROOT / "relay" / "default.toml").read_text()
    assert (ROOT / "config" / "octorelay.example.toml").read_text() == packaged


def test_user_file_merges_over_defaults(tmp_path):
    c = load_text(tmp_path, '[http]\nlisten = "127.0.0.1:9000"\n[smtp_in]\ndomain = "SMS.Example.ORG"\n')
    assert c.http.listen.port == 9000 and c.smtp_in.domain == "sms.example.org"
    assert c.smtp_in.listen.port == 2525  # untouched keys keep their default


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nlisten2 = 1\n", "'http.listen2'"),
        ("[nosuch]\nx = 1\n", "'nosuch'"),
        ("[http]\nlisten = 8080\n", "http.listen"),
        ('[http]\nlisten = "nohost"\n', "http.listen"),
        ('[octopush]\nmode = "production"\n', "octopush.mode"),
        ('[octopush]\ntimeout = "ten"\n', "octopush.timeout"),
        ("[octopush]\nretry_for = 90000\n", "octopush.retry_for"),
        ('[octopush]\nsender = "AB"\n', "octopush.sender"),
        ('[octopush]\nmode = "live"\n', "octopush.api_key"),
        ('[octopush]\napi_key = "changeme"\n', "octopush.api_key"),
        ('[smtp_in]\nregion = "XX"\n', "smtp_in.region"),
        ("[smtp_in]\nmax_size = true\n", "smtp_in.max_size"),
        ('[smtp_in]\nconfirm = "some"\n', "smtp_in.confirm"),
        ('[smtp_in]\nlisten = "0.0.0.0:25"\n', "smtp_in.require_auth"),
        ('[http]\nlisten = "0.0.0.0:8080"\n', "http.ui_users"),
        ('[http.ui_users]\nadmin = "plaintext"\n', "http.ui_users.admin"),
        ('[smtp_out]\nsecurity = "ssl"\n', "smtp_out.security"),
        (
            '[[subscriptions]]\nname = "x"\nto = ["a@b.c"]\nmode = "digest"\nschedule = "61 * * * *"\n',
            "subscriptions[0].schedule",
        ),
        ('[[subscriptions]]\nname = "x"\nto = ["a@b.c"]\ntimezone = "Mars/Olympus"\n', "subscriptions[0].timezone"),
        ('[[subscriptions]]\nname = "x"\nto = ["a@b.c"]\nevents = ["replies"]\n', "subscriptions[0].events"),
        ('[[subscriptions]]\nname = "x"\nto = ["a@b.c"]\ncolour = 1\n', "subscriptions[0].colour"),
        ("[http\n", "not valid TOML"),
        ('groups = "team.csv"\n', "groups"),
        ('[smtp_in]\nstop_mention = "Reply STOP to opt out"\n', "smtp_in.stop_mention"),
        ('[http]\nui_users = "admin"\n', "http.ui_users"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "octorelay.toml") in message and key in message
    assert "\n" not in message


def test_secrets_from_file_env_and_inline(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    c = load_text(
        tmp_path, f'[octopush]\napi_key = "inline"\napi_key_file = "{secret}"\n', env={"OCTOPUSH_API_KEY": "env"}
    )
    assert c.octopush.api_key == "from-file"
    c = load_text(tmp_path, '[octopush]\napi_key = "inline"\n', env={"OCTOPUSH_API_KEY": "from-env"})
    assert c.octopush.api_key == "from-env"
    c = load_text(tmp_path, '[octopush]\napi_key = "inline-key"\n')
    assert c.octopush.api_key == "inline-key" and "inline-key" not in repr(c)


def test_check_config_exit_codes_and_no_secret(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(
        '[octopush]\napi_key = "s3cret-value"\n[[subscriptions]]\nname = "ops"\nto = ["ops@example.org"]\n'
        'mode = "digest"\nschedule = "0 8 * * 1-5"\n'
    )
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret-value" not in out and "subscription ops" in out and "next run" in out
    path.write_text("[http]\nlisten = 1\n")
    assert main(["check-config", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "http.listen" in err and "Traceback" not in err


def test_usage_error_is_exit_2():
    result = subprocess.run([sys.executable, "-m", "relay", "nosuchcommand"], capture_output=True, text=True)
    assert result.returncode == 2


def test_a_send_request_takes_the_octopush_defaults_for_what_its_asker_left_unsaid(tmp_path):
    from relay.octopush.client import Recipient
    from relay.sending import SendRequest
    from relay.statuses import Origin

    o = load_text(
        tmp_path,
        '[octopush]\nmode = "simulation"\napi_login = "a@example.org"\napi_key = "k"\ntype = "sms_low_cost"\n'
        'sender = "ACME"\nwith_replies = false\nauto_optimize_text = false\n',
    ).octopush
    plain = SendRequest.from_config(o, text="hi", recipients=[Recipient("+33612345678")], origin=Origin.WEB)
    assert (plain.type, plain.purpose, plain.sender, plain.with_replies) == ("sms_low_cost", "alert", "ACME", False)
    assert plain.simulation and not plain.auto_optimize_text  # simulation mode: every request is a simulation
    assert plain.recipients == (Recipient("+33612345678"),) and plain.origin == "web" and plain.confirm == "none"
    asked = SendRequest.from_config(
        o,
        text="hi",
        recipients=iter([Recipient("+33612345678")]),
        origin=Origin.CLI,
        type="sms_premium",
        purpose="wholesale",
        sender="",
        with_replies=True,
        label="octorelay send",
    )
    assert (asked.type, asked.purpose, asked.sender, asked.with_replies) == ("sms_premium", "wholesale", "", True)
    assert asked.label == "octorelay send" and asked.recipients == (Recipient("+33612345678"),)
