"""`one_thread`: an autouse fixture (import it into a test module) that runs the module's tests, and its
module-scoped fixtures, with one intra-op thread.

The lab's models are tiny: a second intra-op thread buys nothing, and on a 2-core machine shared with other
processes OpenMP threads spin against each other (a 120-step digits run took 20x the CPU time with 2 threads
under load). Notebook kernels started by the test inherit OMP_NUM_THREADS=1 as well. Both are restored after
the module.
"""
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
