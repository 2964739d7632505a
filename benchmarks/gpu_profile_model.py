# GPU profile (one device call) of a training step of the ~1B Llama preset (the issue-7 model): per provider
# (frozen, lowpeft, eager LoRA), the wall time of a synchronised step, the CUDA kernel time inside it (so the
# gap is the time the GPU waited for the host), and the kernels by name, so that lowpeft's extra time over the
# frozen model can be attributed to its own kernels, to the GEMMs they feed, or to the host.
#
# Trade-off: it reuses lowpeft.bench.model's model builder and providers (what `lowpeft bench model` times), with
# random token ids instead of the shipped text: the loss is not the point here, only where the time goes.
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_probe_components import kernel_table  # noqa: E402  (this script's folder is on sys.path)
from lowpeft.bench.model import PRESETS, _apply_provider, build_llama  # noqa: E402


def profile_provider(provider, preset, dropout, steps=3, timed=8):
    model = _apply_provider(build_llama(preset, "cuda"), provider, 16, 32.0, dropout)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    batch = torch.randint(0, preset.vocab_size, (preset.batch_size, preset.seq_len), device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(0))

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss.item()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    walls = []
    for _ in range(timed):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        walls.append(1e3 * (time.perf_counter() - start))
    table = [(us / 1e3, count, kernel) for us, count, kernel in kernel_table(step, steps)]
    kernel_ms = sum(ms for ms, _, _ in table)
    wall_ms = statistics.median(walls)
    print(f"\n## {provider} p={dropout:g}: step {wall_ms:.1f} ms wall, {kernel_ms:.1f} ms of kernels "
          f"({sum(c for _, c, _ in table):.0f} launches); GPU idle {wall_ms - kernel_ms:.1f} ms")
    for ms, count, kernel in table[:30]:
        print(f"{ms:8.3f} ms  x{count:5.0f}  {kernel[:120]}")
    del model, optimizer, trainable
    torch.cuda.empty_cache()
    return {"wall_ms": wall_ms, "kernel_ms": kernel_ms,
            "kernels": [dict(ms=m, calls=c, name=k) for m, c, k in table]}


def main():
    out = os.environ.get("OUT", "/tmp")
    preset = PRESETS["1b"]
    dropout = float(os.environ.get("PROFILE_DROPOUT", "0"))
    results = {provider: profile_provider(provider, preset, dropout) for provider in ("frozen", "lowpeft", "eager")}
    with open(os.path.join(out, f"profile_model_p{dropout:g}.json"), "w") as handle:
        json.dump({"dropout": dropout, "torch": torch.__version__, "device": torch.cuda.get_device_name(),
                   "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
