"""Exit codes are documented and reachable from the CLI."""

import json

from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode


def test_every_exit_code_has_a_help_line() -> None:
    # (The README's table of them is checked row by row in test_architecture.)
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    assert all(EXIT_CODE_HELP[code].strip() for code in ExitCode)


def test_exit_codes_command() -> None:
    result = CliRunner().invoke(cli, ["exit-codes", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert listed["invalid_input"]["code"] == 4 and listed["deployment_failed"]["code"] == 7


def test_a_service_that_accepts_but_does_not_answer_is_said_to_be_slow_not_unreachable() -> None:
    import socket

    import pytest

    from mlfo_toolkit.errors import UnreachableError
    from mlfo_toolkit.orchestrator.api_clients import AgentClient

    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with AgentClient(address, timeout=0.3) as agent, pytest.raises(UnreachableError, match="did not answer POST /serv within"):
            agent.start_server({"algo": "FedAvg"})
    with AgentClient(address, timeout=0.3, retries=0) as agent, pytest.raises(UnreachableError, match="cannot reach the node agent"):
        agent.status()  # nothing listens there any more


def test_a_busy_agent_is_given_longer_than_a_gone_one_before_it_counts_as_lost() -> None:
    from mlfo_toolkit.config import Config
    from mlfo_toolkit.errors import SlowAnswerError, UnreachableError
    from mlfo_toolkit.orchestrator.watch import lost_after

    config = Config().with_overrides({"mlfo.lost_after_seconds": 4, "mlfo.busy_lost_after_seconds": 30})
    assert lost_after(config, UnreachableError("cannot reach the node agent")) == 4
    assert lost_after(config, SlowAnswerError("the node agent did not answer GET /status within 2 s")) == 30
    assert lost_after(config.with_overrides({"mlfo.lost_after_seconds": 90}), SlowAnswerError("slow")) == 90


def test_a_service_that_dies_mid_answer_is_unreachable_not_an_internal_error() -> None:
    import socket
    import threading

    import pytest

    from mlfo_toolkit.errors import SlowAnswerError, UnreachableError
    from mlfo_toolkit.orchestrator.api_clients import AgentClient

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_half() -> None:  # headers promise 401 bytes, then the process is gone
            conn, _ = listener.accept()
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 401\r\n\r\n")
            conn.close()

        thread = threading.Thread(target=answer_half, daemon=True)
        thread.start()
        with AgentClient(f"127.0.0.1:{listener.getsockname()[1]}", timeout=5, retries=0) as agent, \
                pytest.raises(UnreachableError, match="broke off its answer to GET /status") as caught:
            agent.status()
        assert not isinstance(caught.value, SlowAnswerError)  # gone, not busy: the short lost_after applies
        thread.join(5)
