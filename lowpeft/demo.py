# lowpeft.demo: `lowpeft demo` (the default command, and `make demo`): the whole LoRA workflow in a few minutes on
# any machine, with nothing downloaded. A small Llama is built from a config, LoRA goes on every linear layer of
# its blocks, a few hundred AdamW steps fine-tune it on the text shipped in lowpeft/data (the loss falls), the
# adapter is saved in PEFT's format, reloaded into a fresh model and merged, and each step checks that the
# outputs agree; on a GPU a short fused-vs-unfused layer benchmark follows.
#
# Trade-off: the base model is randomly initialised (a pretrained one would need a download), so what LoRA
# learns here is the text's statistics rather than a new skill; that keeps the demo self-contained and under
# 3 minutes on 2 CPU cores while still exercising every step a real fine-tune takes, end to end.
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import torch

from .bench._common import check_output_directory, device_argument
from .ops._dispatch import CHOICES as BACKEND_CHOICES

__all__ = ["main", "run_demo", "parse_args", "build_parser", "DemoResult"]

_TOLERANCE_RELOAD = 1e-5  # reloading the same weights: the same computation, so equal up to 1e-5 relative
_TOLERANCE_MERGE = 1e-4  # merged W + s·B·A against the unmerged two-path sum: float32 rounding only


@dataclasses.dataclass
class DemoResult:
    """What the demo measured: whether every check passed, the training losses, and the loss on a fixed batch of
    the text before and after fine-tuning."""

    ok: bool
    losses: list
    loss_before: float
    loss_after: float
    seconds: float


def build_parser(prog: str = "lowpeft demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a small Llama with LoRA on a shipped text, save, reload and merge the adapter.",
    )
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps (default 300)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="lowpeft backend (default auto: the fastest available)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="keep the saved adapter in DIR (default: a temporary directory, removed at the end)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the demo's matrices are too small to gain from more, "
                             "and a busy machine slows multi-threaded small products down many times)")
    parser.add_argument("--no-bench", action="store_true", help="skip the layer benchmark that runs on a GPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv=None, prog: str = "lowpeft demo") -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: expected a positive integer, got {args.steps}")
    if args.rank < 1:
        parser.error(f"argument --rank: expected a positive integer, got {args.rank}")
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"argument --dropout: expected a float in [0, 1), got {args.dropout}")
    if args.threads < 1:
        parser.error(f"argument --threads: expected a positive integer, got {args.threads}")
    if not args.lr > 0:
        parser.error(f"argument --lr: expected a positive number, got {args.lr}")
    check_output_directory(parser, "output", args.output)
    device = device_argument(parser, args.device)
    args.device = args.device or device.type
    from lowpeft.ops import _dispatch

    try:
        args.resolved_backend = _dispatch.resolve(args.backend, device)
    except ValueError as exc:
        parser.error(f"argument --backend: {exc}")
    return args


def _max_relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |ours - reference|, that divided by max(1, max |reference|))."""
    difference = (ours.double() - reference.double()).abs().max().item()
    return difference, difference / max(1.0, reference.double().abs().max().item())


def _greedy_sample(model, tokenizer, prompt: str, length: int, context: int, device) -> str:
    ids = tokenizer.encode(prompt).to(device).unsqueeze(0)
    with torch.no_grad():
        for _ in range(length):
            logits = model(input_ids=ids[:, -context:]).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    text = tokenizer.decode(ids[0, len(prompt):].cpu())
    return "".join(char if char.isprintable() and char != "\ufffd" else "·" for char in text)


def _check(name: str, ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> bool:
    absolute, relative = _max_relative_difference(ours, reference)
    ok = relative <= tolerance
    print(f"      {name}: max |logits - trained model's logits| = {absolute:.2e} "
          f"({relative:.1e} relative; tolerance {tolerance:.0e}): {'OK' if ok else 'MISMATCH'}")
    return ok


def _gpu_bench_summary(show_progress: bool) -> None:
    from lowpeft.bench import lora

    lora.main(["--cases", "4096x2048x2048:16:0,8192x4096x4096:16:0", "--modes", "forward+backward",
               "--providers", "frozen,lowpeft,peft,eager"] + ([] if show_progress else ["--no-progress"]))


def run_demo(args: argparse.Namespace) -> DemoResult:
    """The demo's steps, printed as they go (torch's CPU thread count is set to args.threads for the run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _run_demo(args: argparse.Namespace) -> DemoResult:
    import lowpeft
    from lowpeft.bench.model import PRESETS, TARGET_MODULES, ProgressBar, build_llama

    # The output head too: its random init keeps logits within about ±3, too flat for the text's statistics,
    # and an adapter on it is what lets the loss fall well below the unigram level in a few hundred steps.
    DEMO_TARGETS = (*TARGET_MODULES, "lm_head")
    from lowpeft.data import TEXT_NAME, ByteTokenizer, load_text, sample_windows

    started = time.perf_counter()
    device = torch.device(args.device)
    preset = PRESETS["demo"]
    print(f"lowpeft {lowpeft.__version__} demo on {device.type}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"backend {args.resolved_backend}, torch {torch.__version__}"
          f"{f', {args.threads} CPU thread' + ('s' if args.threads > 1 else '') if device.type == 'cpu' else ''}")

    tokenizer = ByteTokenizer()
    tokens = tokenizer.encode(load_text())
    print(f"\n[1/6] a small Llama from a config (no download): hidden {preset.hidden_size}, "
          f"{preset.num_hidden_layers} layers, {preset.num_attention_heads} heads ({preset.num_key_value_heads} KV), "
          f"intermediate {preset.intermediate_size}, byte vocabulary {tokenizer.vocab_size}; "
          f"training text lowpeft/data/{TEXT_NAME}, {tokens.numel()} bytes")
    model = build_llama(preset, device, seed=args.seed)

    config = lowpeft.LoRAConfig(r=args.rank, alpha=2 * args.rank, dropout=args.dropout,
                                target_modules=list(DEMO_TARGETS), backend=args.backend)
    lowpeft.apply(model, config)
    print(f"\n[2/6] LoRA r={config.r}, alpha={config.alpha:g}, dropout={config.dropout:g} on "
          f"{', '.join(TARGET_MODULES)} of every block and on the output head; everything else frozen")
    print("      ", end="")
    lowpeft.print_trainable_parameters(model)

    generator = torch.Generator().manual_seed(args.seed)
    evaluation = sample_windows(tokens, preset.batch_size, preset.seq_len, generator).to(device)
    prompt = "The lamplighter"
    model.eval()
    with torch.no_grad():
        loss_before = model(input_ids=evaluation, labels=evaluation).loss.item()
    sample_before = _greedy_sample(model, tokenizer, prompt, 60, preset.seq_len, device)

    print(f"\n[3/6] fine-tuning {args.steps} steps: batches of {preset.batch_size} x {preset.seq_len} bytes, "
          f"AdamW lr {args.lr:g}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    torch.manual_seed(args.seed)
    losses = []
    checkpoints = {max(1, round(args.steps * fraction)) for fraction in (0.0, 0.25, 0.5, 0.75, 1.0)}
    train_started = time.perf_counter()
    with ProgressBar(args.steps, "      fine-tune", enabled=not args.no_progress) as bar:
        for step in range(1, args.steps + 1):
            batch = sample_windows(tokens, preset.batch_size, preset.seq_len, generator).to(device)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.advance(f"loss {losses[-1]:.3f}")
    train_seconds = time.perf_counter() - train_started
    print("      training loss: " + " -> ".join(f"{losses[step - 1]:.3f} (step {step})" for step in sorted(checkpoints)))
    model.eval()
    with torch.no_grad():
        reference_logits = model(input_ids=evaluation).logits
        loss_after = model(input_ids=evaluation, labels=evaluation).loss.item()
    print(f"      loss on a fixed batch of the text: {loss_before:.3f} before, {loss_after:.3f} after "
          f"({train_seconds:.1f} s, {args.steps * preset.batch_size * preset.seq_len / train_seconds:,.0f} tokens/s)")
    print(f"      greedy continuation of {prompt!r} before: {sample_before!r}")
    print(f"      greedy continuation of {prompt!r} after:  "
          f"{_greedy_sample(model, tokenizer, prompt, 60, preset.seq_len, device)!r}")

    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.output or os.path.join(scratch, "adapter")
        lowpeft.save_adapter(model, directory)
        files = ", ".join(f"{name} ({os.path.getsize(os.path.join(directory, name)) / 1024:.1f} KiB)"
                          for name in sorted(os.listdir(directory)))
        print(f"\n[4/6] saved the adapter in PEFT's format to {directory if args.output else 'a temporary directory'}: {files}")

        fresh = build_llama(preset, device, seed=args.seed)
        lowpeft.load_adapter(fresh, directory)
        fresh.eval()
        with torch.no_grad():
            reloaded_logits = fresh(input_ids=evaluation).logits
        print("\n[5/6] reloaded it into a fresh model built from the same config and seed")
        ok &= _check("reloaded", reloaded_logits, reference_logits, _TOLERANCE_RELOAD)

    fresh = lowpeft.merge_and_unload(fresh)
    with torch.no_grad():
        merged_logits = fresh(input_ids=evaluation).logits
    kinds = sorted({type(module).__name__ for name, module in fresh.named_modules() if name.endswith(DEMO_TARGETS)})
    print(f"\n[6/6] merged the adapter into the base weights (W += scaling · B A) and unloaded it: the targets are "
          f"plain {', '.join(kinds)} again, with no extra work at inference")
    ok &= _check("merged", merged_logits, reference_logits, _TOLERANCE_MERGE)

    if device.type == "cuda" and not args.no_bench:
        print("\n[GPU] fused LoRA layer against PEFT and eager LoRA (forward + backward):")
        _gpu_bench_summary(not args.no_progress)
    seconds = time.perf_counter() - started
    print(f"\n{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {seconds:.0f} s")
    return DemoResult(bool(ok), losses, loss_before, loss_after, seconds)


def main(argv=None, prog: str = "lowpeft demo") -> int:
    result = run_demo(parse_args(argv, prog))
    sys.stdout.flush()
    return 0 if result.ok else 1
