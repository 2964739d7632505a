# A PEFT LoRA training step before and after lowpeft.from_peft on one GPU: the same PeftModel (a Llama built
# from a config, bf16, PEFT's default float32 adapters, LoRA r=16 on every linear layer), forward + backward +
# AdamW step on the adapters, timed with triton.testing.do_bench (median) side by side in one run; plus the
# float32 logits agreement of the two. Writes a markdown table to $OUT/peft_interop.md (or ./peft_interop.md).
#
# Trade-off: 4 decoder layers of the ~1B shape (hidden 2048, intermediate 5632, 32 heads, 4 KV heads) instead
# of 22 keep the run inside a short device lease; per-layer work is that of the full model, so the ratio is
# representative while the absolute time is ~4/22 of a full step.
import copy
import os
import sys
import time

import torch
import triton
import transformers
import peft

import lowpeft
from lowpeft.peft_interop import to_peft


def build(dtype, layers, hidden, intermediate, heads, kv_heads, vocab):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                                      max_position_embeddings=4096, use_cache=False)
    return transformers.LlamaForCausalLM(config).to("cuda", dtype)


def step_time(model, ids, optimizer):
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return triton.testing.do_bench(step, warmup=200, rep=1500, return_mode="median")


def logits_agreement():
    model = peft.get_peft_model(build(torch.float32, 2, 256, 688, 8, 2, 1000),
                                peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    ids = torch.randint(0, 1000, (2, 256), device="cuda")
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
        reference64 = copy.deepcopy(model).double()(input_ids=ids).logits
        lowpeft.from_peft(model)
        ours = model(input_ids=ids).logits
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    rel64_ours = ((ours.double() - reference64).abs().max() / reference64.abs().max()).item()
    rel64_theirs = ((theirs.double() - reference64).abs().max() / reference64.abs().max()).item()
    return rel, rel64_ours, rel64_theirs


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    batch, tokens = 4, 2048
    for dropout in (0.0, 0.05):
        model = peft.get_peft_model(build(torch.bfloat16, 4, 2048, 5632, 32, 4, 32000),
                                    peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear"))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, 32000, (batch, tokens), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        peft_ms = step_time(model, ids, optimizer)
        peft_mem = torch.cuda.max_memory_allocated() / 2**30
        lowpeft.from_peft(model)
        torch.cuda.reset_peak_memory_stats()
        fused_ms = step_time(model, ids, optimizer)
        fused_mem = torch.cuda.max_memory_allocated() / 2**30
        to_peft(model)
        peft_again_ms = step_time(model, ids, optimizer)
        rows.append((dropout, peft_ms, peft_again_ms, fused_ms, peft_mem, fused_mem))
        del model, optimizer
        torch.cuda.empty_cache()
    rel, rel64_ours, rel64_theirs = logits_agreement()
    from lowpeft.ops import _dispatch

    lines = [
        "# PEFT LoRA training step before / after lowpeft.from_peft",
        "",
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
        f"peft {peft.__version__}, transformers {transformers.__version__}; lowpeft backend on cuda: "
        f"{_dispatch.resolve('auto', torch.device('cuda'), torch.bfloat16)}; {time.strftime('%Y-%m-%d')}.",
        f"Model: Llama from a config, 4 layers of the ~1B shape (hidden 2048, intermediate 5632, 32 heads, 4 KV "
        f"heads, vocab 32000), bf16 weights, PEFT's float32 adapters, LoRA r=16 alpha=32 on every linear layer; "
        f"{batch} x {tokens} tokens; one step = forward + backward + AdamW on the adapters; "
        "triton.testing.do_bench median (PEFT timed before and again after undoing the swap).",
        "",
        "| lora_dropout | PEFT (ms) | PEFT again (ms) | from_peft (ms) | speed-up | peak GiB PEFT | peak GiB from_peft |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dropout, peft_ms, again_ms, fused_ms, peft_mem, fused_mem in rows:
        lines.append(f"| {dropout} | {peft_ms:.2f} | {again_ms:.2f} | {fused_ms:.2f} | "
                     f"{min(peft_ms, again_ms) / fused_ms:.2f}x | {peft_mem:.2f} | {fused_mem:.2f} |")
    lines += [
        "",
        f"Logits, float32 (2-layer Llama, hidden 256, random adapters): max |from_peft - PEFT| / max |PEFT| = "
        f"{rel:.2e}; against float64: from_peft {rel64_ours:.2e}, PEFT {rel64_theirs:.2e}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "peft_interop.md"), "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
