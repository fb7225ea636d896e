"""Config precedence: defaults < file < MLFO_* environment < flags; unknown keys are errors."""

from pathlib import Path

import pytest

from mlfo_toolkit.config import load_config
from mlfo_toolkit.errors import ConfigError


def test_defaults_are_the_prototypes_ports(workdir: Path) -> None:
    config = load_config(environ={})
    assert (config.agent.port, config.agent.fl_server_port, config.mlfo.port, config.mlfo.momo_port) == (5000, 6000, 8000, 9000)
    assert config.mlfo.host == "127.0.0.1"  # nothing listens beyond loopback unless configured
    assert config.client_agents()[0] == "10.0.1.10:5000"
    assert config.server_agents() == [f"10.0.{10 + n}.100:5000" for n in range(1, 6)]


def test_file_then_environment_then_flags(workdir: Path) -> None:
    (workdir / "mlfo.yaml").write_text("mlfo: {port: 8001, momo_port: 9001}\nfl: {rounds: 7}\n")
    from_file = load_config(environ={})
    assert (from_file.mlfo.port, from_file.mlfo.momo_port, from_file.fl.rounds) == (8001, 9001, 7)
    from_env = load_config(environ={"MLFO_MLFO__PORT": "8002", "MLFO_API__TOKEN": "12345"})
    assert from_env.mlfo.port == 8002 and from_env.mlfo.momo_port == 9001
    assert from_env.api.token == "12345"  # a numeric-looking secret stays a string
    flagged = load_config(environ={"MLFO_MLFO__PORT": "8002"}, overrides={"mlfo.port": 8003, "fl.rounds": None})
    assert flagged.mlfo.port == 8003 and flagged.fl.rounds == 7


def test_explicit_file_and_mlfo_config_variable(workdir: Path) -> None:
    other = workdir / "other.yaml"
    other.write_text("agent: {port: 5101}\n")
    assert load_config(other, environ={}).agent.port == 5101
    assert load_config(environ={"MLFO_CONFIG": str(other)}).agent.port == 5101
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(workdir / "missing.yaml", environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mlfo: {prot: 8000}\n", "mlfo.prot: unknown key"),
        ("mlf: {port: 8000}\n", "unknown config section 'mlf'"),
        ("mlfo: {port: eighty}\n", "mlfo.port"),
        ("mlfo: [1, 2]\n", "must be a mapping"),
        ("mlfo: {port: 8000\n", "not valid YAML"),
    ],
)
def test_bad_files_are_reported(workdir: Path, text: str, message: str) -> None:
    (workdir / "mlfo.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(environ={})


def test_bad_environment_is_reported(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="MLFO_SECTION__KEY"):
        load_config(environ={"MLFO_PORT": "1"})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(environ={"MLFO_MLFO__PROT": "1"})
    with pytest.raises(ConfigError, match="MLFO_\\* environment"):
        load_config(environ={"MLFO_FL__ROUNDS": "-3"})


def test_explicit_client_list_and_redaction(workdir: Path) -> None:
    config = load_config(environ={"MLFO_API__TOKEN": "s3cret"}, overrides={"ip_plan.clients": ["127.0.0.1:7001", "10.1.1.1"]})
    assert config.client_agents() == ["127.0.0.1:7001", "10.1.1.1:5000"]
    shown = config.redacted()
    assert shown["api"]["token"] == "***" and shown["onos"]["password"] == "***"
    assert "s3cret" not in str(shown)
