"""The domain rules: pure functions over frozen values.

They import only :mod:`messages`, the standard library and ``immutables`` (persistent
maps for the state), so they run and test without threads, brokers or databases
(``tests/unit/test_layers.py`` checks it). The actors in :mod:`actors` feed them
commands, the clock and the configuration, and commit what they decide.
"""
