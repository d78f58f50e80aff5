"""The reference for scalekit's distributed fit: plain DDP + gloo under torchrun.

    torchrun --nproc_per_node=2 bench/ddp_reference.py --samples 200000 --epochs 2 \
        --batch-size 256 --out result.json

Same model, data, seed, optimizer, global batch and batch order as
bench/bench_training.py gives scalekit: each epoch one permutation seeded by
``(seed, epoch)``, cut into global batches of ``--batch-size``; rank r takes its
contiguous share of each. Rank 0 writes the timings and the test accuracy as JSON.
The clock starts once the process group is up and the data is in memory, as scalekit's
per-fit timing excludes cluster start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import Student, make_data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU "
                   "per process: LOCAL_RANK)")
    p.add_argument("--hidden", type=int, default=512)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    X, y, X_test, y_test = make_data(args.samples, args.seed)
    # on a GPU the whole set lives there (the fastest a hand-written loop can do)
    X, y = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)

    torch.manual_seed(args.seed)
    model = DistributedDataParallel(Student(args.hidden).to(device),
                                    device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    # warm-up: one step on a tiny batch (imports torch._dynamo, allocates), then reset
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    loss_fn(model(X[:8]), y[:8]).backward()
    optimizer.zero_grad(set_to_none=True)
    model.module.load_state_dict(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    dist.barrier()
    started = time.perf_counter()
    epoch_s = 0.0
    for epoch in range(args.epochs):
        t = time.perf_counter()
        order = np.random.default_rng([args.seed, epoch]).permutation(args.samples)
        for i in range(0, args.samples, args.batch_size):
            batch = order[i:i + args.batch_size]
            if len(batch) < world:
                continue
            base, extra = divmod(len(batch), world)
            start = rank * base + min(rank, extra)
            piece = torch.from_numpy(batch[start:start + base + (1 if rank < extra else 0)])
            piece = piece.to(device)
            loss = loss_fn(model(X[piece]), y[piece])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_s += time.perf_counter() - t
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    wall = time.perf_counter() - started

    if rank == 0:
        with torch.no_grad():
            pred = model.module(torch.from_numpy(X_test).to(device)).argmax(1).cpu().numpy()
        args.out.write_text(json.dumps({
            "wall_s": wall, "epoch_s": epoch_s, "world_size": world,
            "accuracy": float(np.mean(pred == y_test)),
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
