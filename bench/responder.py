"""The least a request/reply service can do: the raw ceiling Staybook is measured against.

``python -m bench.responder --url URL --queue NAME [--prefetch N]`` consumes a durable
quorum queue and, for each message, publishes one constant reply (a ``CommandResult``
envelope, status ok) to its ``reply_to`` with its correlation id, then acks it. No
parsing, no store, no events: what is left is the broker round trip and pika, so its
CPU per message is the floor for any Python service on the same broker.

It declares the queue (the same arguments as the benchmark), so either side may come
first. SIGTERM or SIGINT stops it after the message in hand; exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import pika
from pika.exceptions import AMQPError

from broker.rabbitmq import connection_parameters
from messages import CommandResult, Envelope, Status

QUEUE_ARGUMENTS = {"x-queue-type": "quorum"}
REPLY = Envelope(correlation_id="-", type="CommandResult", version=1,
                 payload=CommandResult(status=Status.OK)).to_json()


def serve(url: str, queue: str, prefetch: int) -> None:
    """Answer every message on ``queue`` until SIGTERM/SIGINT."""
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conn = pika.BlockingConnection(connection_parameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        ch.basic_qos(prefetch_count=prefetch)

        def on_message(chan: Any, method: Any, props: Any, _body: bytes) -> None:
            if props.reply_to:
                chan.basic_publish("", props.reply_to, REPLY, pika.BasicProperties(
                    correlation_id=props.correlation_id, type="CommandResult"))
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message, auto_ack=False)
        while not stopping:
            conn.process_data_events(time_limit=0.2)
    finally:
        with contextlib.suppress(AMQPError, OSError):
            conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 0 after a requested stop."""
    p = argparse.ArgumentParser(prog="python -m bench.responder",
                                description="Reply a constant to every message of a queue.")
    p.add_argument("--url", required=True, help="the broker's AMQP URL")
    p.add_argument("--queue", required=True, help="a durable quorum queue (declared here)")
    p.add_argument("--prefetch", type=int, default=512,
                   help="unacked messages held at once (Staybook's intake default)")
    args = p.parse_args(argv)
    serve(args.url, args.queue, args.prefetch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
