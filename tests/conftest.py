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
