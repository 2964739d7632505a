# lowpeft.bench.model: end-to-end LoRA training steps of a Llama-architecture model built from a transformers
# LlamaConfig (no download), for four providers side by side: "frozen" (no adapter; the embeddings' output
# requires grad so the backward runs through every layer: the floor), "lowpeft" (lowpeft.apply), "peft"
# (peft.get_peft_model with its default settings) and "eager" (a hand-written LoRA wrapper); on request a fifth,
# "lowpeft_int8" (lowpeft.quantize_base on the block linears, then lowpeft.apply: LoRA over an int8 base).
#
# Every LoRA provider starts from the same base weights (rebuilt from one seed), the same lora_A / lora_B values
# (copied in) and trains on the same batches of the shipped text, so the loss curves can be compared step by
# step. Trade-off: each step is timed once, wall clock around a synchronized step (forward, backward, AdamW),
# instead of replaying one step under do_bench: replaying would change the weights between timings and break
# the loss comparison; the median over the steps after the warm-up ones is as stable for steps of 100+ ms.
# Loss agreement is max over steps of |loss_x - loss_peft| / loss_peft, judged against the same quantity for
# eager vs PEFT (two correct implementations that differ only in rounding): the measured bf16 noise floor.
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import statistics
import sys
import time

import torch
from torch import nn

from ..data import ByteTokenizer, load_text, sample_windows
from ..ops._dispatch import CHOICES as BACKEND_CHOICES
from ._common import ProgressBar, check_output_paths, device_argument, environment, provider_list, write_results

__all__ = [
    "PRESETS",
    "PROVIDERS",
    "TARGET_MODULES",
    "Preset",
    "ProgressBar",
    "EagerLoRALinear",
    "build_llama",
    "run_benchmark",
    "summarize",
    "main",
]

PROVIDERS = ("frozen", "lowpeft", "peft", "eager", "lowpeft_int8")
DEFAULT_PROVIDERS = ("frozen", "lowpeft", "peft", "eager")
# With dropout > 0, lowpeft draws its masks from Philox and PEFT from torch's generator, so their losses differ
# by the masks as well as by rounding: a second PEFT run with other masks gives that noise floor.
OTHER_MASKS = "peft_other_masks"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_TARGET_PATTERN = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(TARGET_MODULES) + r")(?:\.|$)")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A Llama configuration and the batch it is trained on."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    seq_len: int
    batch_size: int
    dtype: str


PRESETS = {
    # CPU-sized: seconds per run, used by the tests and as the CPU default.
    "tiny": Preset(128, 344, 2, 4, 2, 256, 64, 2, "float32"),
    # The demo's model: small enough for a few hundred steps on 2 CPU cores, big enough to learn the text.
    "demo": Preset(128, 344, 4, 4, 2, 256, 128, 8, "float32"),
    # ~1.1B parameters (TinyLlama's shape), the issue-7 acceptance preset for one H100.
    "1b": Preset(2048, 5632, 22, 32, 4, 32000, 2048, 4, "bfloat16"),
}


class EagerLoRALinear(nn.Module):
    """The LoRA layer a user writes by hand: base(x) + scaling · lora_B(lora_A(dropout(x))), in the base's dtype.

    lora_A [r, in] and lora_B [out, r] are kept in the base weight's dtype; the frozen base is the wrapped Linear.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora = nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + lora * self.scaling


def _require(package: str, purpose: str):
    try:
        return __import__(package)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the {package} package, which is not installed: pip install {package}") from exc


def build_llama(preset: Preset, device: torch.device | str, dtype: torch.dtype | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised LlamaForCausalLM of the preset's shape, from `seed` (the same seed on the same
    device gives the same weights), in `dtype` (default: the preset's), with every parameter frozen."""
    transformers = _require("transformers", "building a Llama model")
    config = transformers.LlamaConfig(
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_hidden_layers,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        vocab_size=preset.vocab_size,
        max_position_embeddings=max(preset.seq_len, 128),
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    model.to(dtype or _DTYPES[preset.dtype])
    model.requires_grad_(False)
    return model


def _canonical_name(module_name: str) -> tuple[int, int] | None:
    """(layer, index in TARGET_MODULES) for a module path naming one of a block's linear layers."""
    match = _TARGET_PATTERN.search(module_name)
    if match is None:
        return None
    return int(match.group(1)), TARGET_MODULES.index(match.group(2))


def _adapter_pairs(model: nn.Module, provider: str) -> dict[tuple[int, int], tuple[nn.Parameter, nn.Parameter]]:
    """The (lora_A, lora_B) parameters of every adapted block linear, keyed by (layer, module index)."""
    pairs = {}
    for name, module in model.named_modules():
        key = _canonical_name(name)
        if key is None or key in pairs:
            continue
        if provider == "peft" and isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
            pairs[key] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
        elif provider in ("lowpeft", "eager", "lowpeft_int8") and isinstance(getattr(module, "lora_A", None),
                                                                             nn.Parameter):
            pairs[key] = (module.lora_A, module.lora_B)
    return pairs


def _apply_provider(model: nn.Module, provider: str, rank: int, alpha: float, dropout: float,
                    backend: str = "auto") -> nn.Module:
    if provider == "frozen":
        model.get_input_embeddings().register_forward_hook(lambda module, args, output: output.requires_grad_(True))
        return model
    if provider == "lowpeft":
        import lowpeft

        config = lowpeft.LoRAConfig(r=rank, alpha=alpha, dropout=dropout, target_modules=list(TARGET_MODULES),
                                    backend=backend)
        return lowpeft.apply(model, config)
    if provider == "lowpeft_int8":
        import lowpeft

        lowpeft.quantize_base(model, target_modules=list(TARGET_MODULES), backend=backend)
        # The adapter in the model's dtype, as the lowpeft provider's, so the two rows differ by the base alone.
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        config = lowpeft.LoRAConfig(r=rank, alpha=alpha, dropout=dropout, target_modules=list(TARGET_MODULES),
                                    backend=backend, adapter_dtype=dtype)
        return lowpeft.apply(model, config)
    if provider == "peft":
        peft = _require("peft", "the 'peft' provider")
        config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(TARGET_MODULES))
        return peft.get_peft_model(model, config)
    if provider == "eager":
        targets = [(name, module) for name, module in model.named_modules() if _canonical_name(name) is not None
                   and isinstance(module, nn.Linear)]
        for name, module in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, EagerLoRALinear(module, rank, alpha, dropout))
        return model
    raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")


def _initial_adapters(preset: Preset, rank: int, seed: int) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's default init drawn once from `seed`: lora_A ~ U(±1/sqrt(in)) (kaiming-uniform, a=√5), lora_B = 0."""
    generator = torch.Generator().manual_seed(seed + 1)
    h, m = preset.hidden_size, preset.intermediate_size
    head_dim = h // preset.num_attention_heads
    kv = preset.num_key_value_heads * head_dim
    shapes = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
              "gate_proj": (m, h), "up_proj": (m, h), "down_proj": (h, m)}
    values = {}
    for layer in range(preset.num_hidden_layers):
        for index, name in enumerate(TARGET_MODULES):
            out_features, in_features = shapes[name]
            bound = in_features**-0.5
            lora_A = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            values[(layer, index)] = (lora_A, torch.zeros(out_features, rank))
    return values


def _copy_adapters(model: nn.Module, provider: str, values) -> None:
    pairs = _adapter_pairs(model, provider)
    if set(pairs) != set(values):
        raise RuntimeError(
            f"provider {provider!r}: expected LoRA adapters on {len(values)} block linear layers, found {len(pairs)}"
        )
    with torch.no_grad():
        for key, (lora_A, lora_B) in pairs.items():
            lora_A.copy_(values[key][0])
            lora_B.copy_(values[key][1])


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _run_provider(provider, preset, device, dtype, batches, args, dropout, adapters, show_progress,
                  mask_seed_offset=0) -> dict:
    model = build_llama(preset, device, dtype, args.seed)
    model = _apply_provider(model, provider, args.rank, args.alpha, dropout, args.backend)
    if provider != "frozen":
        _copy_adapters(model, provider, adapters)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr) if trainable else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses, seconds = [], []
    torch.manual_seed(args.seed + 2 + mask_seed_offset)
    label = f"{provider:>7} p={dropout:g}" if provider != "frozen" else f"{provider:>7}"
    if mask_seed_offset:
        label += " (other masks)"
    with ProgressBar(len(batches), label, enabled=show_progress) as bar:
        for batch in batches:
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            losses.append(value)
            bar.advance(f"loss {value:.4f}")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer, trainable, loss
    _release(device)
    step_ms = 1e3 * statistics.median(seconds[args.warmup:])
    tokens = preset.batch_size * preset.seq_len
    return {
        "provider": provider,
        "dropout": dropout if provider != "frozen" else None,
        "step_ms": step_ms,
        "tokens_per_s": tokens / (step_ms / 1e3),
        "peak_gib": peak,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "step_seconds": seconds,
    }


def _max_relative_deviation(losses, reference) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference))


def summarize(rows: list[dict]) -> list[dict]:
    """Per dropout value: lowpeft against PEFT and eager (throughput and memory ratios) and the loss agreement with
    PEFT against its noise floor; adds time_vs_frozen, memory_vs_frozen and loss_dev_vs_peft to the rows.

    The floor is the deviation of eager LoRA from PEFT (same masks, different rounding) and, with dropout > 0,
    also that of a PEFT run with other dropout masks (lowpeft's masks differ from PEFT's): the larger one counts.
    """
    rows = [row for row in rows if "error" not in row]
    frozen = next((row for row in rows if row["provider"] == "frozen"), None)
    summary = []
    for dropout in sorted({row["dropout"] for row in rows if row["dropout"] is not None}):
        group = {row["provider"]: row for row in rows if row["dropout"] == dropout}
        peft_row = group.get("peft")
        for row in group.values():
            if peft_row is not None:
                row["loss_dev_vs_peft"] = _max_relative_deviation(row["losses"], peft_row["losses"])
        entry = {"dropout": dropout}
        lowpeft_row = group.get("lowpeft")
        if lowpeft_row is not None:
            for other in ("peft", "eager"):
                if other in group:
                    entry[f"throughput_vs_{other}"] = lowpeft_row["tokens_per_s"] / group[other]["tokens_per_s"]
                    if lowpeft_row["peak_gib"] is not None:
                        entry[f"memory_vs_{other}"] = lowpeft_row["peak_gib"] / group[other]["peak_gib"]
            if peft_row is not None:
                entry["loss_dev_lowpeft_vs_peft"] = lowpeft_row["loss_dev_vs_peft"]
        floors = [group[name]["loss_dev_vs_peft"] for name in ("eager", OTHER_MASKS) if name in group and peft_row]
        if floors:
            entry["loss_noise_floor"] = max(floors)
        summary.append(entry)
    if frozen is not None:
        for row in rows:
            row["time_vs_frozen"] = row["step_ms"] / frozen["step_ms"]
            if row["peak_gib"] is not None:
                row["memory_vs_frozen"] = row["peak_gib"] / frozen["peak_gib"]
    return summary


def _acceptance_lines(summary: list[dict]) -> list[str]:
    """Issue 7's acceptance points, judged on the measured numbers (1b preset on a GPU)."""
    lines = []
    for entry in summary:
        checks = [
            ("throughput_vs_peft", ">=", 1.6, "lowpeft tokens/s vs PEFT"),
            ("throughput_vs_eager", ">=", 1.25, "lowpeft tokens/s vs eager LoRA"),
            ("memory_vs_peft", "<=", 0.7, "lowpeft peak memory vs PEFT"),
        ]
        for key, op, bound, text in checks:
            if key in entry:
                value = entry[key]
                ok = value >= bound if op == ">=" else value <= bound
                lines.append(f"- dropout {entry['dropout']:g}: {text} = {value:.3f} (target {op} {bound}): {'met' if ok else 'NOT met'}")
        if "loss_dev_lowpeft_vs_peft" in entry and "loss_noise_floor" in entry:
            dev, floor = entry["loss_dev_lowpeft_vs_peft"], entry["loss_noise_floor"]
            ok = dev <= 2 * floor
            lines.append(
                f"- dropout {entry['dropout']:g}: loss deviation from PEFT = {dev:.2e}, noise floor = {floor:.2e} "
                f"(target <= 2 x floor): {'met' if ok else 'NOT met'}"
            )
    return lines


def run_benchmark(args: argparse.Namespace, row_done=None) -> tuple[list[dict], list[dict], dict]:
    """Run every requested provider (frozen once, the LoRA ones once per dropout value); return rows, summary and
    the settings used. row_done(rows, settings), when given, is called after each provider's run (so a long run
    can save partial results)."""
    device = torch.device(args.device)
    preset = dataclasses.replace(
        PRESETS[args.preset],
        **{key: value for key, value in (("seq_len", args.seq_len), ("batch_size", args.batch_size), ("dtype", args.dtype))
           if value is not None},
    )
    dtype = _DTYPES[preset.dtype]
    if {"lowpeft", "lowpeft_int8"} & set(args.providers):
        from lowpeft.ops import _dispatch

        backend = _dispatch.resolve(args.backend, device)
    else:
        backend = None
    tokens = ByteTokenizer().encode(load_text())
    generator = torch.Generator().manual_seed(args.seed)
    batches = [sample_windows(tokens, preset.batch_size, preset.seq_len, generator).to(device) for _ in range(args.steps)]
    adapters = _initial_adapters(preset, args.rank, args.seed)
    settings = _settings(args, preset, backend, device)
    rows = []
    plan = [("frozen", 0.0, 0)] if "frozen" in args.providers else []
    for dropout in args.dropout:
        plan += [(provider, dropout, 0) for provider in args.providers if provider != "frozen"]
        if dropout > 0 and {"lowpeft", "peft"} <= set(args.providers):
            plan.append(("peft", dropout, 1))
    for provider, dropout, mask_seed_offset in plan:
        name = OTHER_MASKS if mask_seed_offset else provider
        label = name if provider == "frozen" else f"{name} (dropout {dropout:g})"
        try:
            row = _run_provider(provider, preset, device, dtype, batches, args, dropout, adapters,
                                not args.no_progress, mask_seed_offset)
        except Exception as exc:  # recorded in the results and the run goes on: one failure must not hide the rest
            row = {"provider": name, "dropout": None if provider == "frozen" else dropout, "error": repr(exc)[:300]}
            print(f"{label}: FAILED {exc!r}", file=sys.stderr, flush=True)
            del exc  # its traceback holds the failed run's model: free it before the next provider starts
            _release(device)
        else:
            row["provider"] = name
            print(f"{label}: step {row['step_ms']:.1f} ms, {row['tokens_per_s']:,.0f} tokens/s, peak "
                  f"{'-' if row['peak_gib'] is None else format(row['peak_gib'], '.2f')} GiB, "
                  f"loss {row['loss_first']:.4f} -> {row['loss_last']:.4f}", file=sys.stderr, flush=True)
        row.update(preset=args.preset, dtype=preset.dtype, steps=args.steps, tokens_per_step=preset.batch_size * preset.seq_len)
        if provider in ("lowpeft", "lowpeft_int8"):
            row["backend"] = backend
        rows.append(row)
        if row_done is not None:
            row_done(rows, settings)
    summary = summarize(rows)
    return rows, summary, settings


def _settings(args: argparse.Namespace, preset: Preset, backend: str | None, device: torch.device) -> dict:
    return {
        "preset": args.preset, **dataclasses.asdict(preset), "rank": args.rank, "alpha": args.alpha, "lr": args.lr,
        "steps": args.steps, "warmup_steps_excluded_from_timing": args.warmup, "seed": args.seed,
        "target_modules": list(TARGET_MODULES), "lowpeft_backend": backend, "device": str(device),
    }


COLUMNS = ["provider", "dropout", "backend", "step_ms", "tokens_per_s", "time_vs_frozen", "peak_gib",
           "memory_vs_frozen", "loss_first", "loss_last", "loss_dev_vs_peft", "error"]

MEASURE_NOTE = (
    "Step: forward + backward + AdamW step on the trainable parameters, batches of the shipped text (byte tokens), "
    "step_ms is the median wall time of a synchronized step after the warm-up steps; peak_gib is the peak CUDA "
    "memory allocated during the run (model, optimizer state, activations). Loss agreement: loss_dev_vs_peft = "
    "max over steps of |loss - loss_peft| / loss_peft from the same base weights, adapter init and batches. Its "
    "noise floor (loss_noise_floor) is the same quantity for eager LoRA vs PEFT (same dropout masks; PEFT keeps "
    "the adapters in float32, eager in the model dtype) and, with dropout > 0, for a PEFT run with other dropout "
    "masks (peft_other_masks; lowpeft draws its masks from Philox, not from torch's generator): the larger counts."
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _dropout_list(text: str) -> list[float]:
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated floats in [0, 1), got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"expected dropout values in [0, 1), got {value}")
        values.append(value)
    return values


def build_parser(prog: str = "lowpeft bench model") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="LoRA training steps of a Llama model built from a config: frozen / lowpeft / PEFT / eager LoRA.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="model size (default: 1b on a GPU, tiny on the CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--steps", type=_positive_int, default=50, help="training steps per provider (default 50)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps left out of the timing (default: min(3, steps - 1))")
    parser.add_argument("--dropout", type=_dropout_list, default=[0.0], help="LoRA dropout, e.g. 0 or 0,0.05")
    parser.add_argument("--providers", type=provider_list(PROVIDERS), default=list(DEFAULT_PROVIDERS),
                        help=f"comma-separated subset of {','.join(PROVIDERS)} (default: all but lowpeft_int8, "
                             "lowpeft over the block linears quantized to int8 by lowpeft.quantize_base)")
    parser.add_argument("--rank", type=_positive_int, default=16)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--seq-len", type=_positive_int, default=None, help="override the preset's sequence length")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="override the preset's batch size")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="override the preset's dtype")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="lowpeft backend for the lowpeft provider (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write rows, per-step losses and the summary as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write the table as CSV")
    parser.add_argument("--md", metavar="PATH", help="write the table and the verdicts as markdown")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(argv=None, prog: str = "lowpeft bench model") -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    device = device_argument(parser, args.device)
    args.device = args.device or device.type
    check_output_paths(parser, json=args.json, md=args.md, csv=args.csv)
    if args.preset is None:
        args.preset = "1b" if device.type == "cuda" else "tiny"
    if args.warmup is None:
        args.warmup = min(3, args.steps - 1)
    elif not 0 <= args.warmup < args.steps:
        parser.error(f"argument --warmup: expected an integer in [0, steps={args.steps}), got {args.warmup}")
    if {"lowpeft", "lowpeft_int8"} & set(args.providers):
        from lowpeft.ops import _dispatch

        try:
            _dispatch.resolve(args.backend, device)
        except ValueError as exc:
            parser.error(f"argument --backend: {exc}")
    if args.alpha <= 0 or args.lr <= 0:
        parser.error(f"arguments --alpha and --lr: expected positive numbers, got {args.alpha} and {args.lr}")
    return args


def write(rows: list[dict], summary: list[dict], settings: dict, args: argparse.Namespace) -> str:
    """Write the requested JSON / CSV / markdown files; return the markdown text."""
    env = environment(torch.device(args.device))
    title = f"lowpeft bench model: preset {args.preset}, {settings['batch_size']} x {settings['seq_len']} tokens, r={args.rank}"
    verdicts = _acceptance_lines(summary) if args.preset == "1b" and torch.device(args.device).type == "cuda" else []
    ratio_lines = [
        "- dropout {dropout:g}: ".format(**entry)
        + ", ".join(f"{key} {value:.3g}" for key, value in entry.items() if key != "dropout")
        for entry in summary
    ]
    notes = MEASURE_NOTE + "\n\nlowpeft against the others:\n" + "\n".join(ratio_lines)
    if verdicts:
        notes += "\n\nIssue 7 acceptance (bf16, 1b preset, this GPU):\n" + "\n".join(verdicts)
    # Loss deviations are small numbers: the table shows them in scientific notation, the JSON keeps the floats.
    shown = [{**row, "loss_dev_vs_peft": f"{row['loss_dev_vs_peft']:.2e}"} if "loss_dev_vs_peft" in row else row
             for row in rows]
    text = write_results(shown, COLUMNS, title, env, md_path=args.md, csv_path=args.csv, notes=notes)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"title": title, "environment": env, "settings": settings, "rows": rows, "summary": summary},
                      handle, indent=2)
    return text


def main(argv=None, prog: str = "lowpeft bench model") -> int:
    args = parse_args(argv, prog)

    def save_partial(rows, settings):
        write(rows, summarize(rows), settings, args)

    rows, summary, settings = run_benchmark(args, save_partial if (args.json or args.md or args.csv) else None)
    print(write(rows, summary, settings, args))
    return 0
