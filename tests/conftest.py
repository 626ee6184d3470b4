import os

os.environ.setdefault("PRIORLAB_QUIET", "1")

import torch  # noqa: E402

# One thread per test process: the suite runs in parallel workers (pytest -n), and small
# models are no faster with more threads.
torch.set_num_threads(1)
