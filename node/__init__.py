"""A Staybook node: everything that runs inside one process, wired under one tree.

:mod:`node.node` builds the store, the broker, the actors and their supervision tree;
:mod:`node.relay` publishes the outbox; :mod:`node.control` answers the operator's
console over RabbitMQ and :mod:`node.metrics` serves Prometheus. The operator's own
tools (CLI, ``ctl``, the live view) are in :mod:`console` and only talk to a node.
"""

from node.node import Node

__all__ = ["Node"]
