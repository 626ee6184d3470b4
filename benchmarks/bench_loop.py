"""Overhead of the reference loop with adapters against a plain PyTorch loop.

Both loops train the same MLP on the same batches with the same loss (cross-entropy + ELR):
the plain loop computes ELR inline, the reference loop gets it from the ELR adapter through
``priorlab.train.fit``. Repetitions are interleaved and the ratio of medians is reported, so
both sides see the same machine load. Target: under 5% overhead.

    python benchmarks/bench_loop.py [--quick]
"""

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from priorlab.functional.elr import elr_regularizer, elr_update_targets
from priorlab.methods.elr import ELR
from priorlab.models import mlp
from priorlab.train import fit

N_CLASSES, BATCH = 10, 128


def make_batches(n_batches: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * BATCH, 784, generator=gen)
    y = torch.randint(0, N_CLASSES, (n_batches * BATCH,), generator=gen)
    idx = torch.arange(len(y))
    return [(x[i:i + BATCH], y[i:i + BATCH], idx[i:i + BATCH]) for i in range(0, len(y), BATCH)]


def plain_loop(model, batches, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    targets = torch.zeros(len(batches) * BATCH, N_CLASSES)
    for _ in range(epochs):
        for xb, yb, ib in batches:
            logits = model(xb)
            targets[ib] = elr_update_targets(targets[ib], logits, 0.7)
            loss = F.cross_entropy(logits, yb) + 3.0 * elr_regularizer(logits, targets[ib])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def reference_loop(model, batches, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    fit(model, batches, opt, F.cross_entropy, epochs=epochs,
        adapters=[ELR(len(batches) * BATCH, N_CLASSES)], show_progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps, n_batches, epochs = (3, 20, 2) if args.quick else (7, 50, 3)
    torch.manual_seed(0)
    base_model = mlp(784, [512, 256], N_CLASSES)
    batches = make_batches(n_batches)
    times = {"plain": [], "reference+adapter": []}
    for _ in range(reps):
        for name, loop in (("plain", plain_loop), ("reference+adapter", reference_loop)):
            model = copy.deepcopy(base_model)
            start = time.perf_counter()
            loop(model, batches, epochs)
            times[name].append((time.perf_counter() - start) / (n_batches * epochs))
    plain, ref = statistics.median(times["plain"]), statistics.median(times["reference+adapter"])
    result = {"steps_per_rep": n_batches * epochs, "reps": reps, "plain_ms_per_step": plain * 1e3,
              "reference_ms_per_step": ref * 1e3, "overhead_ratio": ref / plain,
              "target": "overhead_ratio < 1.05", "torch_threads": torch.get_num_threads()}
    print(f"plain loop           {plain * 1e3:8.3f} ms/step")
    print(f"fit() + ELR adapter  {ref * 1e3:8.3f} ms/step")
    print(f"ratio                {ref / plain:8.3f}  (target < 1.05)")
    out = Path(__file__).parent / "results" / "loop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
