# lowpeft layers under DistributedDataParallel and FSDP2 (fully_shard), two CPU processes over gloo: the
# LoRA gradients equal one process's on the whole batch (also with float32 adapters on a bf16 base under
# FSDP2, and over int8 bases under both) and the frozen base gets no gradient. Trade-off:
# the CPU and gloo keep this in CI; the GPU scaling run is benchmarks/bench_distributed.py.
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lowpeft

WORLD = 2
BATCH = 8


def _model(mixed_dtype=False):
    """Two LoRA layers; with mixed_dtype a bf16 base carries float32 adapters; with "int8" the bases are int8
    (lowpeft.Int8Linear) under float32 adapters."""
    torch.manual_seed(0)
    if mixed_dtype == "int8":
        model = nn.Sequential(
            lowpeft.Int8LoRALinear.from_int8_linear(lowpeft.Int8Linear.from_linear(nn.Linear(16, 32)), r=4, alpha=8,
                                                    backend="torch"),
            nn.GELU(),
            lowpeft.Int8LoRALinear.from_int8_linear(lowpeft.Int8Linear.from_linear(nn.Linear(32, 8)), r=3, alpha=6,
                                                    backend="torch"),
        )
    elif mixed_dtype:
        model = nn.Sequential(
            lowpeft.LoRALinear.from_linear(nn.Linear(16, 32, dtype=torch.bfloat16), r=4, alpha=8, backend="torch",
                                           adapter_dtype=torch.float32),
            nn.GELU(),
            lowpeft.LoRALinear.from_linear(nn.Linear(32, 8, dtype=torch.bfloat16), r=3, alpha=6, backend="torch",
                                           adapter_dtype=torch.float32),
        )
    else:
        model = nn.Sequential(
            lowpeft.LoRALinear(16, 32, r=4, alpha=8, backend="torch"),
            nn.GELU(),
            lowpeft.LoRALinear(32, 8, r=3, alpha=6, backend="torch"),
        )
    for layer in (model[0], model[2]):
        nn.init.normal_(layer.lora_B, std=0.2)
    return model


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 16, generator=gen), torch.randn(BATCH, 8, generator=gen)


def _lora_grads(model):
    grads = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            grad = param.grad
            grads[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return grads


def _loss(model, x, target):
    dtype = next(p.dtype for n, p in model.named_parameters() if n.endswith("weight") and p.is_floating_point()
                 or n.endswith("lora_A"))
    return nn.functional.mse_loss(model(x.to(dtype)).float(), target)


def _single_process_grads(mixed_dtype):
    model = _model(mixed_dtype)
    x, target = _batch()
    _loss(model, x, target).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    return _lora_grads(model)


def _train_one_step(rank, wrapper, mixed_dtype):
    """One data-parallel step on this rank's shard: (LoRA gradients as lists, names of frozen params with grads)."""
    model = _model(mixed_dtype)
    if wrapper == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # An explicit CPU mesh: fully_shard's default mesh is on CUDA wherever a GPU exists, which would move the
        # parameters there while the batch and the gloo group stay on the CPU.
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in model:
            if isinstance(layer, lowpeft.LoRALinear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    x, target = _batch()
    shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    _loss(model, x[shard], target[shard]).backward()
    frozen_grads = [n for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None]
    # Plain lists cross the process boundary safely (shared-memory tensors die with the worker).
    grads = {k.replace("module.", ""): v.detach().tolist() for k, v in _lora_grads(model).items()}
    return grads, frozen_grads


def _worker(rank, port, wrapper, mixed_dtype, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    finished = False
    try:
        # The wrapped model (which holds the process group) is released before the group is torn down, and
        # both ranks meet at a barrier first: a gloo group destroyed during interpreter shutdown, or while the
        # other rank still uses it, can abort with "terminate called without an active exception".
        grads, frozen_grads = _train_one_step(rank, wrapper, mixed_dtype)
        queue.put((rank, grads, frozen_grads))
        dist.barrier()
        finished = True
    except Exception:
        queue.put((rank, traceback.format_exc(), None))
        raise
    finally:
        dist.destroy_process_group()
    # The work is done and reported: leave without interpreter shutdown, whose static destructors can still
    # meet gloo's threads (one abort in ~15 CI runs in session 1 after every other precaution above), once the
    # queue's feeder thread has flushed the result.
    if finished:
        queue.close()
        queue.join_thread()
        os._exit(0)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("wrapper,mixed_dtype", [("ddp", False), ("fsdp2", False), ("fsdp2", True), ("ddp", "int8"),
                                                 ("fsdp2", "int8")])
def test_data_parallel_gradients_match_one_process(wrapper, mixed_dtype):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    if wrapper == "fsdp2":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard) needs torch >= 2.6")
        from torch.distributed import fsdp

        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no torch.distributed.fsdp.fully_shard")
    if wrapper == "fsdp2" and mixed_dtype == "int8" and _torch_version() < (2, 13):
        pytest.skip("torch 2.11's fully_shard wraps every shard as nn.Parameter(requires_grad=True), which an int8 "
                    "weight cannot be (RuntimeError, run 95); torch 2.13 keeps the flag (2.12 not tried)")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, wrapper, mixed_dtype, queue)) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in range(WORLD)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    expected = _single_process_grads(mixed_dtype)
    tolerance = dict(rtol=2e-2, atol=2e-3) if mixed_dtype is True else dict(rtol=1e-5, atol=1e-6)
    for rank, grads, frozen_grads in results:
        assert frozen_grads is not None, f"rank {rank} failed:\n{grads}"
        assert frozen_grads == [], f"rank {rank}: frozen parameters got gradients: {frozen_grads}"
        assert sorted(grads) == sorted(expected)
        for name in expected:
            torch.testing.assert_close(torch.tensor(grads[name]), expected[name], **tolerance, msg=f"rank {rank} {name}")
