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


@pytest.fixture
def small_config():
    """``small_config(**changes)``: the tests' usual model (vocab 64, width 32, 2 layers, 4 heads, 64 tokens),
    validated like any config, so that each test names only what it changes."""
    from ctxlab import reference_config

    def make(**changes):
        return reference_config(**{**SMALL_MODEL, **changes})
    return make


SMALL_MODEL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
