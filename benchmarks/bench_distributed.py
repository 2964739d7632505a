# Multi-GPU training with lowpeft LoRA layers: DDP or FSDP2 (fully_shard) on a Llama built from a preset,
# launched with torchrun. Reports the loss per step (mean over the global batch), step time, tokens/s, peak
# memory per GPU, and — given the single-process result of the same global batch — the largest loss
# deviation and the scaling efficiency.
#
#   torchrun --nproc_per_node 1 benchmarks/bench_distributed.py --wrapper ddp --json one.json
#   torchrun --nproc_per_node 2 benchmarks/bench_distributed.py --wrapper ddp --reference one.json --json two.json
#
# Trade-off: weak scaling with a fixed global batch split across ranks (each rank runs micro-batches of
# --micro-batch sequences, accumulating gradients), so the one-process run computes the very same loss and the
# efficiency is (tokens/s with N GPUs) / (N · tokens/s with one). On a machine without CUDA it runs on the CPU
# over gloo (the tiny preset), which is how it is smoke-tested.
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lowpeft  # noqa: E402
from lowpeft.bench._common import environment, write_results  # noqa: E402
from lowpeft.bench.model import PRESETS, TARGET_MODULES, build_llama  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--wrapper", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: 1b on CUDA, tiny on the CPU")
    parser.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step, over all ranks")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default: preset's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16, dest="lora_rank")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--reference", help="JSON of the one-process run of the same global batch")
    parser.add_argument("--json")
    parser.add_argument("--md")
    return parser.parse_args(argv)


def _wrap(model: nn.Module, wrapper: str, device: torch.device) -> nn.Module:
    if wrapper == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    preset = PRESETS[args.preset or ("1b" if device.type == "cuda" else "tiny")]
    micro = args.micro_batch or preset.batch_size
    if args.global_batch % (world * micro):
        raise ValueError(f"--global-batch: expected a multiple of world size x micro-batch = {world * micro}, "
                         f"got {args.global_batch}")
    accumulation = args.global_batch // (world * micro)

    model = build_llama(preset, device)
    lowpeft.apply(model, lowpeft.LoRAConfig(r=args.lora_rank, alpha=args.lora_rank, dropout=args.dropout,
                                            target_modules=list(TARGET_MODULES)))
    model = _wrap(model, args.wrapper, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    data = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, preset.vocab_size, (args.steps, args.global_batch, preset.seq_len), generator=data)
    losses, times = [], []
    torch.manual_seed(0)
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step_loss = torch.zeros((), device=device)
        for micro_step in range(accumulation):
            first = (rank * accumulation + micro_step) * micro
            batch = tokens[step, first:first + micro].to(device)
            loss = model(input_ids=batch, labels=batch).loss / accumulation
            loss.backward()
            step_loss += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(step_loss)
        losses.append(step_loss.item() / world)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)

    timed = times[args.warmup:] or times
    step_s = statistics.median(timed)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    result = {
        "wrapper": args.wrapper, "world_size": world, "preset": args.preset or ("1b" if device.type == "cuda" else "tiny"),
        "global_batch": args.global_batch, "seq_len": preset.seq_len, "dropout": args.dropout,
        "step_ms": 1e3 * step_s, "tokens_per_s": args.global_batch * preset.seq_len / step_s,
        "peak_gib_per_gpu": peaks, "losses": losses,
    }
    if args.reference:
        with open(args.reference) as handle:
            reference = json.load(handle)["rows"][0]
        result["max_loss_deviation"] = max(abs(a - b) / abs(b) for a, b in zip(losses, reference["losses"]))
        result["scaling_efficiency"] = result["tokens_per_s"] / (world * reference["tokens_per_s"])
    if rank == 0:
        columns = ["wrapper", "world_size", "preset", "global_batch", "step_ms", "tokens_per_s", "peak_gib_per_gpu",
                   "max_loss_deviation", "scaling_efficiency"]
        text = write_results([result], columns, f"lowpeft LoRA under {args.wrapper}, {world} process(es)",
                             environment(device), json_path=args.json, md_path=args.md,
                             notes="max_loss_deviation: max over steps of |loss - loss_one_process| / loss_one_process.")
        print(text)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
