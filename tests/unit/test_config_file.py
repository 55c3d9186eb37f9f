"""Settings from a TOML file and the environment: precedence, strict keys and types, every
setting described once, `fabric config show` redacted and reusable as a file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fabric.cli import main
from fabric.config import (
    Settings,
    describe_settings,
    resolve_settings,
    setting_help,
    setting_names,
)
from fabric.errors import InvalidArgument


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fabric.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_file_sets_values_and_the_environment_wins(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        'listen = "127.0.0.1:6000"\nmax_rows = 500\nquery_timeout = 30\nhome = "~/fab"\n',
    )
    resolved = resolve_settings({"FABRIC_MAX_ROWS": "7"}, config_file=path)
    settings = resolved.settings
    assert settings.listen == "127.0.0.1:6000"
    assert settings.max_rows == 7  # the environment wins over the file
    assert settings.query_timeout == 30.0 and isinstance(settings.query_timeout, float)
    assert settings.home == Path("~/fab").expanduser()
    assert resolved.origins == {
        "listen": "file",
        "max_rows": "environment",
        "query_timeout": "file",
        "home": "file",
    }


def test_fabric_config_names_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "page_rows = 12\n")
    assert Settings.from_env({"FABRIC_CONFIG": str(path)}).page_rows == 12
    assert Settings.from_env({}).page_rows == Settings().page_rows


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_row = 5\n", "unknown setting 'max_row' (did you mean 'max_rows'?)"),
        ("nonsense_key = 1\n", "unknown setting 'nonsense_key'"),
        ('max_rows = "5"\n', "setting 'max_rows' must be an integer"),
        ("max_rows = true\n", "setting 'max_rows' must be an integer"),
        ("max_rows = 5.5\n", "setting 'max_rows' must be an integer"),
        ("listen = 50051\n", "setting 'listen' must be a string"),
        ('query_timeout = "30"\n', "setting 'query_timeout' must be a number"),
        ("max_rows = \n", "is not valid TOML"),
        ("max_rows = 0\n", "setting max_rows must be positive"),
    ],
)
def test_a_bad_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_settings({}, config_file=_file(tmp_path, text))
    assert message in info.value.message


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_settings({}, config_file=tmp_path / "absent.toml")
    assert "does not exist" in info.value.message


def test_every_setting_is_described_once() -> None:
    undescribed = [name for name in setting_names() if not setting_help(name)]
    assert undescribed == []


def test_show_redacts_secrets_and_reads_back_as_a_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "max_rows = 99\n")
    resolved = resolve_settings(
        {
            "FABRIC_VAULT_TOKEN": "hvs.topsecret",
            "FABRIC_NATS_URL": "nats://user:pa55word@nats.internal:4222",
            "FABRIC_METADATA_URL": "postgresql://fabric:dbpa55@db/fabric",
        },
        config_file=path,
    )
    shown = describe_settings(resolved)
    for secret in ("topsecret", "pa55word", "dbpa55"):
        assert secret not in shown
    assert "nats://user:<redacted>@nats.internal:4222" in shown
    assert "max_rows = 99  # from the file" in shown
    assert "from FABRIC_NATS_URL" in shown
    # the output is a configuration file that gives the same settings (the secret left out)
    reread = tomllib.loads(shown)
    assert "vault_token" not in reread
    again = resolve_settings({}, config_file=_file(tmp_path, shown)).settings
    assert again.max_rows == 99 and again.listen == resolved.settings.listen


def test_config_show_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, f'home = "{tmp_path}"\nbatch_rows = 1024\n')
    assert main(["--config", str(path), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "batch_rows = 1024  # from the file" in out
    assert f"# (file {path})" in out


def test_a_bad_file_fails_the_command_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _file(tmp_path, "max_rowz = 1\n")
    assert main(["--config", str(path), "config", "show"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'max_rows'" in err and "Traceback" not in err


def test_metrics_listen_must_be_host_and_port() -> None:
    assert Settings(metrics_listen="127.0.0.2:9464").metrics_address() == ("127.0.0.2", 9464)
    assert Settings(metrics_port=0).metrics_address() is None
    assert Settings().metrics_address() == ("127.0.0.1", 9464)
    with pytest.raises(InvalidArgument):
        Settings.from_env({"FABRIC_METRICS_LISTEN": "9464"})
