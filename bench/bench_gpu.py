"""The GPU suite of bench_training.py (``--device cuda``), in one run on one machine.

    python bench/bench_training.py --device cuda          # MLP 64-2048-2048-10, 200k, batch 1024
    python bench/bench_training.py --device cuda --quick  # 20k samples, 1 epoch

Ratios printed (issue 12's targets in brackets):

* scalekit on 1 GPU worker / plain skorch ``net.fit`` on the same GPU  [>= 2.0]
* training set kept on the GPU / copied a batch ahead from pinned memory
* bf16 and fp16 accuracy minus float32 accuracy                          [bf16 within 0.01]
* fsdp and local SGD on 1 GPU / ddp on 1 GPU
* with N >= 2 GPUs: scalekit on N GPU workers / ``torchrun`` DDP+NCCL on N GPUs  [>= 0.97]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from bench_training import (
    Result,
    Workload,
    _progress,
    make_data,
    print_table,
    run_plain,
    run_scalekit,
    run_torchrun,
)


def main(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    n_gpus = torch.cuda.device_count()
    n = args.n or (20_000 if args.quick else 200_000)
    epochs = args.epochs or (1 if args.quick else 3)
    batch = 1024 if args.batch_sizes == "256" else int(args.batch_sizes.split(",")[0])
    w = Workload(n=n, epochs=epochs, batch_size=batch, seed=args.seed, hidden=2048,
                 device="cuda", lr=0.01)
    data = make_data(n, args.seed)
    print(f"workload: MLP 64-2048-2048-10 on {n} x 64 float32, {epochs} epochs, batch "
          f"{batch}, SGD lr 0.01 momentum 0.9; torch {torch.__version__}, {n_gpus} x "
          f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs", flush=True)
    started = time.perf_counter()

    import dask.config

    import scalekit as sk

    checkpoints = tempfile.TemporaryDirectory(prefix="bench-gpu-checkpoints-")
    dask.config.set({"scalekit.checkpoint.root": checkpoints.name})
    r = max(1, args.repeats)
    results: list[Result] = []

    def add(result: Result) -> Result:
        results.append(result)
        _progress(result)
        return result

    threads = max(1, (os.cpu_count() or 1) // n_gpus)
    plain = add(run_plain("skorch net.fit on 1 GPU", w, data, threads, r))
    session = sk.cluster(gpus=1)
    try:
        session.wait_for_workers(1)
        one = add(run_scalekit("scalekit, 1 GPU worker", session, w, data, r))
        pref = add(run_scalekit("scalekit, 1 GPU worker, batches copied ahead", session, w,
                                data, r, data_on_device=False))
        bf16 = add(run_scalekit("scalekit, 1 GPU worker, bf16", session, w, data, r,
                                precision="bf16"))
        fp16 = add(run_scalekit("scalekit, 1 GPU worker, fp16", session, w, data, r,
                                precision="fp16"))
        fsdp = add(run_scalekit("scalekit, 1 GPU worker, fsdp", session, w, data, r,
                                strategy="fsdp"))
        lsgd = add(run_scalekit("scalekit, 1 GPU worker, local_sgd", session, w, data, r,
                                strategy="local_sgd"))
        multi = ref = None
        if n_gpus >= 2:
            session.scale(n_gpus)
            session.wait_for_workers(n_gpus)
            multi = add(run_scalekit(f"scalekit, {n_gpus} GPU workers", session, w, data, r))
    finally:
        session.close()
    if n_gpus >= 2:
        ref = add(run_torchrun(f"torchrun DDP+NCCL, {n_gpus} GPUs", w, n_gpus, threads, r))
    checkpoints.cleanup()

    print()
    print_table(results)
    print("\nratios (same run; > 1 means the first is faster)")
    rows = [
        ("scalekit 1 GPU worker / skorch net.fit on the same GPU  [target >= 2.0]", one, plain),
        ("training set on the GPU / copied a batch ahead", one, pref),
        ("bf16 / float32 (samples/s)", bf16, one),
        ("fp16 / float32 (samples/s)", fp16, one),
        ("fsdp / ddp on 1 GPU", fsdp, one),
        ("local_sgd / ddp on 1 GPU", lsgd, one),
    ]
    if multi is not None and ref is not None:
        rows.append((f"scalekit {n_gpus} GPU workers / torchrun NCCL {n_gpus} GPUs "
                     "[target >= 0.97]", multi, ref))
    for label, a, b in rows:
        print(f"  {label:<72} {a.samples_per_s / b.samples_per_s:5.2f}")
    print("accuracy differences (points; same data and seed)")
    print(f"  bf16 - float32: {100 * (bf16.accuracy - one.accuracy):+.2f}  [target within 1]")
    print(f"  fp16 - float32: {100 * (fp16.accuracy - one.accuracy):+.2f}")
    print(f"  scalekit 1 GPU - skorch: {100 * (one.accuracy - plain.accuracy):+.2f}")
    print(f"\ntotal bench time {time.perf_counter() - started:.0f}s")
    return 0
