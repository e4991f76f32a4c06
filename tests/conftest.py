import atexit
import os
import shutil
import tempfile

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads that wait for a
# descheduled peer make small ops 10-100x slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests must be quick and reproducible on a 2-core CPU.
torch.set_num_threads(min(2, os.cpu_count() or 1))


# Modules whose tests train many runs or start processes (measured with --durations on the full suite): marked
# slow, so that `pytest -m "not slow"` is a fast lane for development. CI runs the whole suite.
SLOW_MODULES = {"test_kill_loop", "test_interrupt", "test_mmap_cache", "test_cli", "test_faults", "test_faults_more",
                "test_v4", "test_v5", "test_progressive", "test_distill", "test_lr_find", "test_export",
                "test_predict", "test_bad_input_three", "test_engine", "test_report", "test_models_transformers",
                "test_commands", "test_audit", "test_bench_audit"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The decode cache is on by default ($XDG_CACHE_HOME/imgcls): point it at a throwaway folder for the whole
# session, before any test module builds a subprocess environment from os.environ, so that no test ever
# writes to the real ~/.cache.
_CACHE_HOME = tempfile.mkdtemp(prefix="imgcls-test-xdg-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)


@pytest.fixture(scope="session")
def finished_v1(tmp_path_factory):
    """A finished v1 run (tiny model, one epoch) on the built-in demo data, trained once per test run and shared:
    tests that use it must leave it as they found it (they compare snapshots of it)."""
    import train
    out = tmp_path_factory.mktemp("finished-v1")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(out / "cache")
    try:
        assert train.main(["--version", "v1", "--out", str(out), "--model", "tiny_efficientnet", "--pretrained",
                           "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "1",
                           "--eval-batch-size", "64", "--device", "cpu"]) == 0
    finally:
        os.environ.pop("XDG_CACHE_HOME") if old is None else os.environ.update(XDG_CACHE_HOME=old)
    return out


@pytest.fixture(scope="session")
def finished_v5(tmp_path_factory):
    """A finished v5 run (three cross-fitted members of a tiny model, one epoch each, a short cRT) on the demo
    data, with predict.py's scores on its test split; trained once per test run and shared, read-only."""
    import predict
    import train
    out = tmp_path_factory.mktemp("finished-v5")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(out / "cache")
    try:
        assert train.main(["--version", "v5", "--fold", "all", "--out", str(out), "--model", "tiny_efficientnet",
                           "--pretrained", "none", "--img-size", "32", "--epochs", "1", "--crt-steps", "5",
                           "--workers", "1", "--eval-batch-size", "64", "--device", "cpu"]) == 0
        assert predict.main(["--run", str(out / "v5"), "--device", "cpu", "--workers", "1"]) == 0
    finally:
        os.environ.pop("XDG_CACHE_HOME") if old is None else os.environ.update(XDG_CACHE_HOME=old)
    return out / "v5"
