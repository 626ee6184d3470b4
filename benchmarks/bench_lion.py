"""Lion vs AdamW: optimizer step time and state memory on a ~10M-parameter MLP.

    python benchmarks/bench_lion.py [--quick]

Both optimizers update identical copies of the model with the same gradients. Step times are
measured in interleaved repetitions in this one run (so machine load hits both alike) and
compared by their medians. "lion (default)" is Lion(foreach=None): the per-parameter loop on
CPU, the multi-tensor kernels on an accelerator. Targets from the paper (arXiv:2302.06675):
Lion is not slower than
AdamW (foreach) and keeps half its state. Writes benchmarks/results/lion.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from priorlab.models import mlp
from priorlab.optim.lion import Lion

RESULTS = Path(__file__).resolve().parent / "results" / "lion.json"


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke check)")
    args = parser.parse_args()
    repetitions, warmup = (5, 1) if args.quick else (30, 3)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base = mlp(1024, [2048, 2048, 1024], 1024).to(device)  # 9.44M parameters
    n_params = sum(p.numel() for p in base.parameters())
    # the paper's tuning rule: Lion lr 10x smaller, weight decay 10x larger than AdamW's
    makers = {
        "lion (default)": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.1),
        "lion (foreach)": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.1, foreach=True),
        "lion (per-parameter loop)": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.1, foreach=False),
        "adamw (foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01,
                                                        foreach=True),
    }
    gen = torch.Generator().manual_seed(1)
    grads = [(torch.randn(p.shape, generator=gen) * 1e-3).to(device) for p in base.parameters()]
    optimizers = {}
    for name, make in makers.items():
        model = copy.deepcopy(base)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        optimizers[name] = make(list(model.parameters()))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for rep in range(warmup + repetitions):
        for name, opt in optimizers.items():  # interleaved: each repetition times all of them
            sync()
            start = time.perf_counter()
            opt.step()
            sync()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)

    baseline = "adamw (foreach)"
    median = {name: statistics.median(t) for name, t in times.items()}
    memory = {name: state_bytes(opt) for name, opt in optimizers.items()}
    rows = [{"optimizer": name, "median_step_ms": 1e3 * median[name],
             "step_time_ratio_vs_adamw": median[name] / median[baseline],
             "state_bytes": memory[name], "state_bytes_per_param": memory[name] / n_params,
             "state_ratio_vs_adamw": memory[name] / memory[baseline]} for name in optimizers]
    lion = next(r for r in rows if r["optimizer"] == "lion (default)")
    targets = {"not_slower_than_adamw": lion["step_time_ratio_vs_adamw"] <= 1.0,
               "half_the_state_memory": lion["state_ratio_vs_adamw"] <= 0.5 + 1e-3}

    print(f"Lion vs AdamW step on an MLP with {n_params / 1e6:.2f}M parameters "
          f"on {device.type} ({repetitions} interleaved repetitions, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'optimizer':<28}{'median ms':>11}{'time ratio':>12}{'state B/param':>15}"
          f"{'state ratio':>13}")
    for r in rows:
        print(f"{r['optimizer']:<28}{r['median_step_ms']:>11.2f}"
              f"{r['step_time_ratio_vs_adamw']:>12.3f}{r['state_bytes_per_param']:>15.3f}"
              f"{r['state_ratio_vs_adamw']:>13.3f}")
    for target, met in targets.items():
        print(f"target {target} (lion default): {'met' if met else 'NOT met'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "lion_vs_adamw_step", "device": device.type, "n_params": n_params,
        "repetitions": repetitions,
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(),
        "rows": rows, "targets": targets}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
