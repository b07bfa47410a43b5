import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Test tensors are small, and pytest-xdist already runs one worker per core: one thread each is fastest.

    ``OMP_NUM_THREADS`` set by hand (``OMP_NUM_THREADS=2 make unit``) is honoured, so that the tolerances are
    checked under another reduction order too."""
    threads = torch.get_num_threads()
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(wanted) if wanted.isdigit() and int(wanted) > 0 else 1)
    yield
    torch.set_num_threads(threads)
