"""Fixtures for real services live in tests/fixtures/, one module per service."""
import os

pytest_plugins = [
    "tests.fixtures.network_guard",  # first: its session patch is in place before any service starts
    "tests.fixtures.image_server",
    "tests.fixtures.es",
    "tests.fixtures.chat",
    "tests.fixtures.tiny_clip",
    "tests.fixtures.training",
    "tests.fixtures.triton",
    "tests.fixtures.pubsub",
    "pytester",  # runs small pytest sessions in a subprocess (tests/test_network_guard.py)
]

# Tests never reach a model hub; loading code must work from local directories alone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    """One intra-op torch thread in the test process: the suite's models and batches are tiny, and on a small
    shared machine a second OpenMP thread made training steps 10-20x slower, not faster; parallelism comes
    from pytest-xdist's workers. Subprocesses the tests start keep torch's default, as users run them."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return   # the xdist controller runs no tests
    import torch
    torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The random-order seed on every run, ``-q`` included, so an order-dependent failure can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"random order seed {seed}: replay it with pytest -p randomly --randomly-seed={seed}")
