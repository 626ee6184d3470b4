"""Adapters under distributed data parallel: 2 CPU processes (gloo), torch.distributed directly.

For every registry adapter that declares ``ddp_safe = True``, each process trains its half of the
card example's global batch through DistributedDataParallel with :func:`priorlab.train.fit`:

* the weights equal a single-process run on the whole global batch to ``atol=ATOL, rtol=RTOL``
  (float32; the all-reduce averages two half-batch means where one process takes the mean of
  the whole batch, so the two differ by rounding only);
* both processes end with the same weights and the same adapter state;
* a checkpoint taken after ``SPLIT`` epochs (rank 0 writes it, every rank loads it into fresh
  model, optimiser and adapter) resumes exactly: bit-equal to continuing in place.

Adapters that are not DDP-safe (per-sample buffers: ELR, PS-KD) must be refused by fit while a
process group is initialised.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from priorlab.errors import PriorlabError
from priorlab.registry import all_cards, get
from priorlab.train import fit

WORLD = 2
EPOCHS, SPLIT = 4, 2  # checkpoint after SPLIT of EPOCHS epochs (one step per epoch)
ATOL, RTOL = 1e-5, 1e-4


def _adapter_cards(safe: bool) -> list[str]:
    return [card.id for card in all_cards()
            if card.adapter is not None and card.example is not None
            and card.example().adapter_fn is not None
            and card.example().adapter_fn().ddp_safe is safe]


def _shard(batch: tuple, rank: int) -> tuple:
    size = batch[0].shape[0]
    if size % WORLD:
        raise AssertionError(f"the example batch ({size}) must split evenly over {WORLD} processes")
    half = size // WORLD
    return tuple(part[rank * half:(rank + 1) * half] for part in batch)


def _parts(example, wrap):
    model = example.model_fn()
    if wrap:
        model = DistributedDataParallel(model)
    return model, example.optimizer_fn(model.parameters()), example.adapter_fn()


def _train(model, optimizer, adapter, batch, loss_fn, epochs):
    fit(model, [batch], optimizer, loss_fn, epochs=epochs, adapters=[adapter], show_progress=False)


def _weights(model) -> list[torch.Tensor]:
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return [p.detach().clone() for p in module.parameters()]


def _run_card(card_id: str, rank: int, checkpoint_path: str) -> dict:
    example = get(card_id).example()
    batch = _shard(example.batch, rank)
    model, optimizer, adapter = _parts(example, wrap=True)
    _train(model, optimizer, adapter, batch, example.loss_fn, SPLIT)
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                    "adapter": adapter.state_dict()}, checkpoint_path)
    dist.barrier()  # the checkpoint is on disk before anyone reads it
    _train(model, optimizer, adapter, batch, example.loss_fn, EPOCHS - SPLIT)  # continued in place

    saved = torch.load(checkpoint_path, weights_only=False)
    fresh = example.model_fn()
    fresh.load_state_dict(saved["model"])
    fresh = DistributedDataParallel(fresh)
    fresh_optimizer = example.optimizer_fn(fresh.parameters())
    fresh_optimizer.load_state_dict(saved["optimizer"])
    fresh_adapter = example.adapter_fn()
    fresh_adapter.load_state_dict(saved["adapter"])
    _train(fresh, fresh_optimizer, fresh_adapter, batch, example.loss_fn, EPOCHS - SPLIT)
    return {"continued": _weights(model), "resumed": _weights(fresh),
            "adapter_state": adapter.state_dict(), "resumed_adapter_state": fresh_adapter.state_dict()}


def _refusal(card_id: str, rank: int) -> str:
    example = get(card_id).example()
    model, optimizer, adapter = _parts(example, wrap=True)
    try:
        _train(model, optimizer, adapter, _shard(example.batch, rank), example.loss_fn, 1)
    except PriorlabError as error:
        return str(error)
    return ""


def _worker(rank: int, init_file: str, out_dir: str, safe: list[str], unsafe: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {card_id: _run_card(card_id, rank, os.path.join(out_dir, f"{card_id}.pt"))
                   for card_id in safe}
        refusals = {card_id: _refusal(card_id, rank) for card_id in unsafe}
        torch.save({"results": results, "refusals": refusals}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _single_process(card_id: str) -> list[torch.Tensor]:
    example = get(card_id).example()
    model, optimizer, adapter = _parts(example, wrap=False)
    _train(model, optimizer, adapter, example.batch, example.loss_fn, SPLIT)
    _train(model, optimizer, adapter, example.batch, example.loss_fn, EPOCHS - SPLIT)
    return _weights(model)


def _assert_same_state(a, b, exact: bool):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key], exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y, exact)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0 if exact else RTOL, atol=0 if exact else ATOL)
    elif isinstance(a, float) and not exact:
        assert a == pytest.approx(b, rel=RTOL, abs=ATOL)
    else:
        assert a == b


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    safe, unsafe = _adapter_cards(True), _adapter_cards(False)
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out_dir / "init"), str(out_dir), safe, unsafe), nprocs=WORLD, join=True)
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
    return safe, unsafe, ranks


def test_the_registry_has_adapters_of_both_kinds():
    assert {"elr", "pskd"} <= set(_adapter_cards(False))  # per-sample buffers, sharded under DDP
    assert "random-teacher" in _adapter_cards(True)


def test_ddp_safe_adapters_match_a_single_process_on_the_same_global_batch(ddp_run):
    safe, _, ranks = ddp_run
    for card_id in safe:
        expected = _single_process(card_id)
        initial = _weights(get(card_id).example().model_fn())
        assert any(not torch.equal(a, b) for a, b in zip(expected, initial)), f"{card_id}: nothing moved"
        for rank in ranks:
            for got, want in zip(rank["results"][card_id]["continued"], expected):
                torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{card_id}: {m}")


def test_processes_agree_and_a_mid_run_checkpoint_resumes_exactly(ddp_run):
    safe, _, ranks = ddp_run
    for card_id in safe:
        first = ranks[0]["results"][card_id]
        for rank in ranks:
            result = rank["results"][card_id]
            _assert_same_state(result["resumed"], result["continued"], exact=True)
            _assert_same_state(result["resumed_adapter_state"], result["adapter_state"], exact=True)
            _assert_same_state(result["continued"], first["continued"], exact=True)
            _assert_same_state(result["adapter_state"], first["adapter_state"], exact=False)


def test_adapters_that_are_not_ddp_safe_are_refused_under_ddp(ddp_run):
    _, unsafe, ranks = ddp_run
    assert unsafe
    for rank in ranks:
        for card_id in unsafe:
            assert "not safe under distributed data parallel" in rank["refusals"][card_id], card_id
