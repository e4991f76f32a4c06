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


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory):
    """(run folder, data folder): a finished 1-fold v1 run of tiny_convnext, one epoch, on a small class-folder
    data set (shirts / shoes / watches); shared: tests may add prediction folders, and restore what they change."""
    from imgcls import engine
    from imgcls.presets import resolve
    from tests.helpers import tiny_overrides, write_folder_dataset
    root = tmp_path_factory.mktemp("folder-run")
    data = write_folder_dataset(root / "data", counts=(12, 8, 6))
    cfg = resolve("v1", tiny_overrides(data, root / "runs", model="tiny_convnext", epochs=1))
    engine.fit(cfg, 0, log=lambda *a, **k: None)
    return root / "runs" / "v1", data
