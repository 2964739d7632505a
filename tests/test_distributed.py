# lowpeft layers under DistributedDataParallel and FSDP2 (fully_shard), two CPU processes over gloo: the
# LoRA gradients equal one process's on the whole batch and the frozen base gets no gradient. Trade-off:
# the CPU and gloo keep this in CI; the GPU scaling run is benchmarks/bench_distributed.py.
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lowpeft

WORLD = 2
BATCH = 8


def _model():
    torch.manual_seed(0)
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


def _single_process_grads():
    model = _model()
    x, target = _batch()
    nn.functional.mse_loss(model(x), target).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    return _lora_grads(model)


def _worker(rank, port, wrapper, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if wrapper == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, lowpeft.LoRALinear):
                    fully_shard(layer)
            fully_shard(model)
        x, target = _batch()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        nn.functional.mse_loss(model(x[shard]), target[shard]).backward()
        frozen_grads = [n for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None]
        # Plain lists cross the process boundary safely (shared-memory tensors die with the worker).
        grads = {k.replace("module.", ""): v.detach().tolist() for k, v in _lora_grads(model).items()}
        queue.put((rank, grads, frozen_grads))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_data_parallel_gradients_match_one_process(wrapper):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    if wrapper == "fsdp2":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard) needs torch >= 2.6")
        from torch.distributed import fsdp

        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no torch.distributed.fsdp.fully_shard")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, wrapper, queue)) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=120) for _ in range(WORLD)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    expected = _single_process_grads()
    for rank, grads, frozen_grads in results:
        assert frozen_grads == [], f"rank {rank}: frozen parameters got gradients: {frozen_grads}"
        assert sorted(grads) == sorted(expected)
        for name in expected:
            torch.testing.assert_close(torch.tensor(grads[name]), expected[name], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")
