"""Per-step overhead of the Lightning and Hugging Face Trainer bridges against a plain loop.

    python benchmarks/bench_bridges.py [--quick]

Every arm trains a copy of the same MLP (512-1024-1024-10, batch 256, random data) with the same
adapters (RandomTeacher, BackSlash) and the same Lion optimiser, one torch thread:

- ``plain``: a hand-written loop driving the adapters through ``AdapterRunner`` (the baseline);
- ``fit``: ``priorlab.train.fit``;
- ``lightning``: ``L.Trainer`` with ``PriorlabCallback`` + ``PriorlabLossMixin`` (no logger,
  checkpointing or progress bar; pre-made batches through a ``DataLoader(batch_size=None)``);
- ``hf``: ``PriorlabTrainer`` on a per-example dataset (its own collation, no clipping, no
  logging step inside the timed window).

A step's time is the interval between the starts of consecutive batches, after warm-up steps,
so trainer start-up is excluded. Each repetition gives the median step interval (robust to other
processes taking the CPU for a moment) and the mean one; repetitions are interleaved (machine
load hits every arm alike) and the median over repetitions is compared with the plain loop's.
Target: every bridge within 5 % of the plain loop (by median steps; the mean ratios are reported
beside them). The time the HF collator takes to stack one batch is measured on its own, since
the Trainer collates per-example data that the other arms get as ready batches. Writes
benchmarks/results/bridges.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import priorlab
from priorlab.integrations.runner import AdapterRunner
from priorlab.methods.gg_prior import BackSlash
from priorlab.methods.random_teacher import RandomTeacher
from priorlab.models import mlp
from priorlab.train import fit

RESULTS = Path(__file__).resolve().parent / "results" / "bridges.json"
IN, HIDDEN, CLASSES, BATCH, LR = 512, [1024, 1024], 10, 256, 1e-4


class Net(nn.Module):
    """The MLP under a ``forward(x)`` the HF Trainer can call with the dataset's key."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x)


def make_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, IN, generator=gen), torch.randint(0, CLASSES, (BATCH,), generator=gen))
            for _ in range(n)]


def make_adapters(teacher: nn.Module):
    return [RandomTeacher(copy.deepcopy(teacher), weight=0.5), BackSlash(rate=0.05)]


class Stamped:
    """Iterates the batches, noting when each one is handed out."""

    def __init__(self, batches, stamps: list[float]):
        self.batches, self.stamps = batches, stamps

    def __iter__(self):
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch


def plain(model, teacher, batches, stamps):
    optimizer = priorlab.create_optimizer(model, "lion", lr=LR)
    runner = AdapterRunner(make_adapters(teacher), "bench")
    runner.setup(model, optimizer)
    for x, y in Stamped(batches, stamps):
        logits = model(x)
        terms = runner.loss_terms(x, logits, y)
        loss = F.cross_entropy(logits, y) + sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        runner.before_optimizer_step()
        optimizer.step()
        runner.after_step()
    runner.epoch_end()


def with_fit(model, teacher, batches, stamps):
    optimizer = priorlab.create_optimizer(model, "lion", lr=LR)
    fit(model, Stamped(batches, stamps), optimizer, F.cross_entropy, epochs=1,
        adapters=make_adapters(teacher), show_progress=False)


def with_lightning(model, teacher, batches, stamps):
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    from priorlab.integrations.lightning import PriorlabCallback, PriorlabLossMixin

    class Module(PriorlabLossMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            return self.priorlab_loss(F.cross_entropy(logits, y), inputs=x, outputs=logits, targets=y)

        def configure_optimizers(self):
            return priorlab.create_optimizer(self.net, "lion", lr=LR)

    class Stamp(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            stamps.append(time.perf_counter())

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PriorlabCallback(make_adapters(teacher)), Stamp()])
    trainer.fit(Module(), DataLoader(batches, batch_size=None, shuffle=False))


def with_hf(model, teacher, batches, stamps):
    from transformers import TrainerCallback, TrainingArguments

    from priorlab.integrations.hf import PriorlabTrainer, optimizer_cls_and_kwargs

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    dataset = [{"x": x[i], "labels": y[i]} for x, y in batches for i in range(len(y))]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=BATCH,
                                 lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
                                 logging_steps=10_000, report_to="none", save_strategy="no",
                                 use_cpu=True, disable_tqdm=True, seed=0, label_names=["labels"])
        trainer = PriorlabTrainer(model=Net(model), args=args, train_dataset=dataset,
                                  adapters=make_adapters(teacher), callbacks=[Stamp()],
                                  optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("lion", lr=LR))
        trainer.train()


def hf_collate_seconds(batch, repeats: int = 20) -> float:
    """Median time of the HF default collator stacking one batch of per-example dicts."""
    from transformers import default_data_collator

    x, y = batch
    examples = [{"x": x[i], "labels": y[i]} for i in range(len(y))]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        default_data_collator(examples)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


ARMS = {"plain": plain, "fit": with_fit, "lightning": with_lightning, "hf": with_hf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    args = parser.parse_args()
    reps, warmup, steps = (2, 3, 12) if args.quick else (5, 5, 40)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    base, teacher = mlp(IN, HIDDEN, CLASSES), mlp(IN, HIDDEN, CLASSES)
    batches = make_batches(warmup + steps + 1)  # +1: the last interval ends at the last batch's start

    median_step: dict[str, list[float]] = {name: [] for name in ARMS}
    mean_step: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(reps):
        for name, arm in ARMS.items():
            stamps: list[float] = []
            arm(copy.deepcopy(base), teacher, batches, stamps)
            timed = stamps[warmup:]
            if len(timed) != steps + 1:
                raise RuntimeError(f"{name}: {len(stamps)} batch starts seen, expected {len(batches)}")
            median_step[name].append(statistics.median(b - a for a, b in zip(timed, timed[1:])))
            mean_step[name].append((timed[-1] - timed[0]) / steps)

    median = {name: statistics.median(t) for name, t in median_step.items()}
    mean = {name: statistics.median(t) for name, t in mean_step.items()}
    ratio = {name: median[name] / median["plain"] for name in ARMS}
    mean_ratio = {name: mean[name] / mean["plain"] for name in ARMS}
    met = all(ratio[name] <= 1.05 for name in ("lightning", "hf"))
    collate = hf_collate_seconds(batches[0])
    result = {"model": f"mlp {IN}-{'-'.join(map(str, HIDDEN))}-{CLASSES}", "batch": BATCH,
              "adapters": ["RandomTeacher", "BackSlash"], "optimizer": "lion", "reps": reps,
              "warmup_steps": warmup, "timed_steps": steps, "torch_threads": torch.get_num_threads(),
              "ms_per_step_median": {name: m * 1e3 for name, m in median.items()},
              "ms_per_step_mean": {name: m * 1e3 for name, m in mean.items()},
              "all_reps_median_ms": {name: [t * 1e3 for t in ts] for name, ts in median_step.items()},
              "all_reps_mean_ms": {name: [t * 1e3 for t in ts] for name, ts in mean_step.items()},
              "ratio_vs_plain": ratio, "mean_ratio_vs_plain": mean_ratio,
              "hf_collate_ms_per_batch": collate * 1e3,
              "target": "ratio_vs_plain <= 1.05 for lightning and hf", "target_met": met,
              "quick": args.quick}
    for name in ARMS:
        print(f"{name:10s} median {median[name] * 1e3:8.2f} ms/step  ratio {ratio[name]:6.3f}   "
              f"(mean {mean[name] * 1e3:8.2f} ms/step  ratio {mean_ratio[name]:6.3f})")
    print(f"HF collation of one batch: {collate * 1e3:.2f} ms")
    print(f"target: lightning and hf <= 1.05 x plain -> {'met' if met else 'NOT met'}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
