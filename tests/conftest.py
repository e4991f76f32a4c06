import os

import pytest
import torch

# Tests must be quick and reproducible on a 2-core CPU.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
