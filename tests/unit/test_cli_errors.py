"""Every CLI mistake or outage is one line on stderr: no traceback, no password."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from console.cli import app

DOWN = {"STAYBOOK_BROKER__URL": "amqp://user:s3cret@127.0.0.1:1/%2F"}


@pytest.mark.parametrize(("args", "needle"), [
    (["send", "AddApartment", "a1", '{"owner_id": "o", "city": "Oslo", "title": "T", '
      '"price_per_night": 100, "capacity": 2}'], "cannot reach RabbitMQ at"),
    (["send", "AddApartment", "a1", '{"owner_id": "o"}'], "invalid AddApartment: city"),
    (["search", "--city", "Oslo"], "cannot reach RabbitMQ at"),
    (["serve", "--no-local-broker", "--wait", "1"], "did not answer in 1s"),
    (["send", "AddApartment", "a1", "{bad"], "the payload is not JSON"),
    (["send", "Nope", "a1", "{}"], "unknown message type Nope"),
    (["search", "--start", "tomorrow"], "--start 'tomorrow' is not a date"),
    (["search", "--start", "2030-01-10", "--end", "2030-01-05"],
     "--end 2030-01-05 is not after --start 2030-01-10"),
    (["search", "--guests", "0"], "greater than or equal to 1"),
    (["search", "--after", "1", "--wait-ms", "30001"], "less than or equal to 30000"),
    (["search", "--after", "0"], "greater than or equal to 1"),
])
def test_one_clear_line(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, args, env=DOWN)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines()
             if not line.startswith(("message_id ", "waiting up to"))]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output and "s3cret" not in result.output
