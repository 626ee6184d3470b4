"""DSnoT vs Wanda: pruning time, as a ratio measured in the same run.

    python benchmarks/bench_dsnot.py [--quick] [--smollm2]

Two timings per model, each the median of interleaved repetitions (so machine load hits both
alike): the mask time alone (Wanda's mask, or Wanda's mask then DSnoT's cycles, on every linear
layer from statistics gathered once; the quantity the official code's ``--get_time_overhead``
reports) and the end-to-end ``prune_model`` time (calibration forward passes included). Models:
a seeded Llama with random weights (4 layers, width 256) and, with ``--smollm2``,
SmolLM2-135M-Instruct. DSnoT runs with priorlab's defaults (the README command under the first
official main.py: every layer refined, sign rule on) and with the current main.py's (MLP layers
skipped, sign rule off). The paper (arXiv:2310.08915) calls DSnoT linear-time and cheap next to Wanda's own
cost; no number is asserted here. Writes benchmarks/results/dsnot.json.
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

from priorlab.llm import SMOLLM2, documentation_tokens, load_pretrained, tiny_llama
from priorlab.sparsity.dsnot import DSnoT
from priorlab.sparsity.pruning import prune_model, wanda_mask

RESULTS = Path(__file__).resolve().parent / "results" / "dsnot.json"
SPARSITY = 0.6


def layer_statistics(model, calibration):
    """(name, weight, stats) of every decoder linear layer, gathered by a dense pass of prune_model."""
    layers = []
    prune_model(copy.deepcopy(model), calibration, 0.0, "wanda",
                refine=lambda name, weight, mask, stats: layers.append((name, weight.clone(), stats)) or mask)
    return layers


def time_masks(layers, refine) -> float:
    start = time.perf_counter()
    for name, weight, stats in layers:
        mask = wanda_mask(weight, stats.sq_norm, SPARSITY)
        if refine is not None:
            refine(name, weight, mask, stats)
    return time.perf_counter() - start


def time_prune(model, calibration, refine) -> float:
    fresh = copy.deepcopy(model)
    start = time.perf_counter()
    prune_model(fresh, calibration, SPARSITY, "wanda", refine=refine)
    return time.perf_counter() - start


def bench(label, model, calibration, repetitions):
    variants = {"wanda": lambda: None, "wanda+dsnot (defaults)": lambda: DSnoT(),
                "wanda+dsnot (current main.py)": lambda: DSnoT(keep_error_sign=False, skip=("mlp",))}
    layers = layer_statistics(model, calibration)
    times = {name: {"mask": [], "end_to_end": []} for name in variants}
    for _ in range(repetitions):
        for name, make in variants.items():  # interleaved
            times[name]["mask"].append(time_masks(layers, make()))
            times[name]["end_to_end"].append(time_prune(model, calibration, make()))
    rows = []
    for name in variants:
        mask, total = (statistics.median(times[name][k]) for k in ("mask", "end_to_end"))
        rows.append({"model": label, "method": name, "mask_s": mask, "end_to_end_s": total,
                     "mask_ratio_vs_wanda": mask / statistics.median(times["wanda"]["mask"]),
                     "end_to_end_ratio_vs_wanda": total / statistics.median(times["wanda"]["end_to_end"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke check)")
    parser.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M-Instruct")
    args = parser.parse_args()
    repetitions = 2 if args.quick else 5

    gen = torch.Generator().manual_seed(0)
    tiny = tiny_llama(vocab_size=256, hidden=256, layers=4, heads=4, intermediate=688, seed=0)
    rows = bench("tiny_llama (4 x 256, random)", tiny,
                 torch.randint(256, (8, 128), generator=gen), repetitions)
    if args.smollm2:
        model, tokenizer = load_pretrained(SMOLLM2)
        tokens = documentation_tokens(tokenizer, "calibration")
        rows += bench(SMOLLM2, model, tokens[:8 * 256].view(8, 256), max(1, repetitions // 2))

    print(f"Wanda vs Wanda+DSnoT pruning time at {SPARSITY:.0%} sparsity "
          f"({torch.get_num_threads()} threads, medians of {repetitions} interleaved repetitions)")
    print(f"{'model':<32}{'method':<38}{'mask s':>9}{'ratio':>7}{'total s':>9}{'ratio':>7}")
    for r in rows:
        print(f"{r['model']:<32}{r['method']:<38}{r['mask_s']:>9.3f}{r['mask_ratio_vs_wanda']:>7.2f}"
              f"{r['end_to_end_s']:>9.2f}{r['end_to_end_ratio_vs_wanda']:>7.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "dsnot_vs_wanda_prune_time", "sparsity": SPARSITY, "repetitions": repetitions,
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
