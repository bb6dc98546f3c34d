"""Operator and producer tools: the ``staybook`` CLI, the demo, a local broker."""
