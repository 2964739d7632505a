# Model-level PEFT: apply a LoRA / bottleneck-adapter / prompt-tuning config to any nn.Module in place,
# several named adapters per model (add, set active, disable in a context, delete), merge / unmerge /
# merge_and_unload, trainable-parameter reports in PEFT's format, and selective fine-tuning (freeze,
# unfreeze_last_blocks).
#
# Trade-off: each adapter is a set of lowpeft layers that share the frozen base weights with the original
# modules (no copy); the model holds only the active adapter's layers, and switching adapters swaps modules
# in their parents (a few attribute assignments per layer, no arithmetic). So parameter names, state dicts
# and optimizers see exactly one adapter, as in a single-adapter model; the bookkeeping (original modules,
# inactive adapters) lives in a plain attribute of the model that is not part of its state dict, and
# inactive adapters follow the model's device when they are activated again.
from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .config import ALL_LINEAR, AdapterConfig, LoRAConfig, PromptTuningConfig
from .nn.int8_linear import Int8AdapterLinear, Int8Linear, Int8LoRALinear
from .nn.lora_linear import LoRALinear
from .nn.prompt import PromptEmbedding, prepend_prompt

__all__ = [
    "apply",
    "add_adapter",
    "set_adapter",
    "disable_adapters",
    "delete_adapter",
    "active_adapter",
    "adapter_names",
    "adapter_config",
    "adapter_layers",
    "merge",
    "unmerge",
    "merge_and_unload",
    "trainable_parameters",
    "print_trainable_parameters",
    "freeze",
    "unfreeze_last_blocks",
]

Config = Union[LoRAConfig, AdapterConfig, PromptTuningConfig]
_STATE_ATTRIBUTE = "_lowpeft_adapters"
PROMPT_MODULE_NAME = "lowpeft_prompt"


@dataclass
class _Adapter:
    config: Config
    layers: dict = field(default_factory=dict)  # module path -> lowpeft layer (LoRALinear / AdapterLinear)
    prompt: Optional[PromptEmbedding] = None


@dataclass
class _ModelAdapters:
    base: dict = field(default_factory=dict)  # module path -> the original module it replaces
    adapters: dict = field(default_factory=dict)  # adapter name -> _Adapter
    active: Optional[str] = None
    enabled: bool = True
    prompt_hook: Optional[object] = None


# ------------------------------------------------------------------------------------------------------
# module matching (PEFT's rule)
# ------------------------------------------------------------------------------------------------------
def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2), recognised without importing transformers."""
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2


# nn.Linear subclasses whose own forward computes x Wᵀ + b exactly as nn.Linear's does (checked against their source):
# (module prefix, class name).
_LINEAR_EQUIVALENT_SUBCLASSES = {("transformers.models.falcon.", "FalconLinear")}


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, a subclass keeping nn.Linear's forward (e.g. MultiheadAttention's out_proj) or known to compute
    the same (transformers' FalconLinear), or Conv1D. Any other subclass with a forward of its own (a quantized or
    fake-quantized Linear) is not: lowpeft's layers read its weight and would skip that forward."""
    if isinstance(module, nn.Linear):
        kind = type(module)
        return kind.forward is nn.Linear.forward or any(
            kind.__module__.startswith(prefix) and kind.__name__ == name for prefix, name in _LINEAR_EQUIVALENT_SUBCLASSES)
    return is_conv1d(module)


def is_adaptable(module: nn.Module) -> bool:
    """What LoRA adapts: a linear-like module (is_linear_like) or lowpeft's own int8 base (Int8Linear)."""
    return is_linear_like(module) or isinstance(module, Int8Linear)


def _skipped_linears(modules) -> list[str]:
    """'path (Class)' of the nn.Linear subclasses with a forward of their own among (name, module) pairs."""
    return [f"{name} ({type(m).__qualname__})" for name, m in modules if isinstance(m, nn.Linear)
            and not is_linear_like(m)]


def matches(targets, name: str) -> bool:
    """PEFT's target rule: a string is a regex that must match the whole name; a collection matches a name equal
    to one of its entries or ending in "." + an entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return name in targets or any(name.endswith(f".{target}") for target in targets)


def _output_head(model: nn.Module) -> Optional[nn.Module]:
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            return getter()
        except (NotImplementedError, AttributeError):
            return None
    return None


def _original_modules(model: nn.Module, state: Optional[_ModelAdapters]) -> list[tuple[str, nn.Module]]:
    """(name, module) for the model as it was before any lowpeft layer replaced a module."""
    replaced = {} if state is None else state.base
    prefixes = tuple(f"{path}." for path in replaced)
    found = []
    for name, module in model.named_modules():
        if not name or (prefixes and name.startswith(prefixes)) or name == PROMPT_MODULE_NAME:
            continue
        found.append((name, replaced.get(name, module)))
    return found


def _some_names(modules: Sequence[tuple[str, nn.Module]], limit: int = 12) -> str:
    linear = [name for name, module in modules if is_adaptable(module)]
    names = linear or [name for name, _ in modules]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def target_paths(model: nn.Module, config: Union[LoRAConfig, AdapterConfig]) -> list[str]:
    """The module paths `config` targets in `model`; ValueError when nothing matches or a match is not a
    Linear / Conv1D."""
    modules = _original_modules(model, _state(model))
    if config.target_modules == ALL_LINEAR:
        head = _output_head(model)
        chosen = [(name, m) for name, m in modules if is_adaptable(m) and m is not head]
    else:
        chosen = [(name, m) for name, m in modules if matches(config.target_modules, name)]
    if config.exclude_modules is not None:
        chosen = [(name, m) for name, m in chosen if not matches(config.exclude_modules, name)]
    if not chosen:
        skipped = _skipped_linears(modules)
        raise ValueError(
            f"target_modules: {config.target_modules!r} matched no module of {type(model).__name__} "
            f"(names or name suffixes, a full-match regex, or 'all-linear'); its linear modules are: "
            f"{_some_names(modules)}"
            + (f"; Linear subclasses with a forward of their own, which lowpeft does not adapt: "
               f"{', '.join(skipped[:6])}{', ...' if len(skipped) > 6 else ''}" if skipped else "")
        )
    for name, module in chosen:
        if not is_adaptable(module):
            kind = type(module)
            raise ValueError(
                f"target_modules: {config.target_modules!r} matched {name!r}, a {kind.__module__}.{kind.__qualname__}; "
                "lowpeft adapts nn.Linear (and subclasses that keep its forward) and transformers Conv1D modules "
                "only: a Linear with a forward of its own (quantized, fake-quantized) would have that forward skipped"
            )
    return [name for name, _ in chosen]


# ------------------------------------------------------------------------------------------------------
# bookkeeping
# ------------------------------------------------------------------------------------------------------
def _state(model: nn.Module) -> Optional[_ModelAdapters]:
    return model.__dict__.get(_STATE_ATTRIBUTE)


def _require_state(model: nn.Module, action: str) -> _ModelAdapters:
    _check_model(model)
    state = _state(model)
    if state is None or not state.adapters:
        raise ValueError(f"model: {action} needs a model with lowpeft adapters (lowpeft.apply), got one with none")
    return state


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _check_adapter_name(adapter_name) -> None:
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name: expected a non-empty string without '.', got {adapter_name!r}")


def _set_child(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def _adapter_parameters(adapter: _Adapter, state: _ModelAdapters) -> list[nn.Parameter]:
    """The trainable parameters an adapter adds (its LoRA matrices / bottleneck weights / prompt)."""
    if adapter.prompt is not None:
        return [adapter.prompt.weight]
    params = []
    for path, layer in adapter.layers.items():
        base = {id(p) for p in state.base[path].parameters()}
        params.extend(p for p in layer.parameters() if id(p) not in base)
    return params


def _any_merged(state: _ModelAdapters) -> bool:
    return any(getattr(layer, "merged", False) for a in state.adapters.values() for layer in a.layers.values())


def _install(model: nn.Module, state: _ModelAdapters, name: Optional[str]) -> None:
    """Put adapter `name`'s layers (None: the original modules) in place and route the prompt hook."""
    adapter = state.adapters.get(name) if name is not None else None
    for path, base in state.base.items():
        module = adapter.layers.get(path, base) if adapter is not None else base
        device = base.weight.device
        if any(p.device != device for p in module.parameters()):
            module.to(device)
        _set_child(model, path, module)
    if PROMPT_MODULE_NAME in model._modules:
        del model._modules[PROMPT_MODULE_NAME]
    if adapter is not None and adapter.prompt is not None:
        embeddings = model.get_input_embeddings()
        adapter.prompt.to(embeddings.weight.device)
        model.add_module(PROMPT_MODULE_NAME, adapter.prompt)


def _prompt_pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    prompt = model._modules.get(PROMPT_MODULE_NAME)
    if prompt is None:
        return None
    return (), prepend_prompt(prompt, model.get_input_embeddings(), args, kwargs)


# ------------------------------------------------------------------------------------------------------
# building adapters
# ------------------------------------------------------------------------------------------------------
def _lora_layer(base: nn.Module, config: LoRAConfig) -> LoRALinear:
    kwargs = dict(r=config.r, alpha=config.alpha, dropout=config.dropout, use_rslora=config.use_rslora,
                  init=config.init, backend=config.backend,
                  adapter_dtype=None if config.adapter_dtype is None else getattr(torch, config.adapter_dtype))
    if isinstance(base, Int8Linear):
        return Int8LoRALinear.from_int8_linear(base, **kwargs)
    if is_conv1d(base):
        return LoRALinear.from_conv1d(base, **kwargs)
    return LoRALinear.from_linear(base, **kwargs)


def _bottleneck_layer(path: str, base: nn.Module, config: AdapterConfig) -> nn.Module:
    from .nn.adapter import AdapterLinear

    if isinstance(base, Int8Linear):
        return Int8AdapterLinear.from_int8_linear(base, bottleneck=config.bottleneck, activation=config.activation,
                                                  scale=config.scale, backend=config.backend)
    if not isinstance(base, nn.Linear):
        raise ValueError(
            f"target_modules: {path!r} is a {type(base).__name__}; bottleneck adapters attach to nn.Linear modules "
            "(and lowpeft's Int8Linear)"
        )
    return AdapterLinear.from_linear(base, bottleneck=config.bottleneck, activation=config.activation,
                                     scale=config.scale, backend=config.backend)


def _prompt_init(model: nn.Module, config: PromptTuningConfig, embeddings: nn.Module):
    weight = embeddings.weight
    if config.init == "random":
        return "random"
    if config.init == "sample_vocab":
        ids = torch.randint(0, weight.shape[0], (config.num_virtual_tokens,))
    else:
        token_ids = list(config.init_token_ids)
        if max(token_ids) >= weight.shape[0]:
            raise ValueError(
                f"init_token_ids: expected ids below the vocabulary size {weight.shape[0]}, got {max(token_ids)}"
            )
        repeats = -(-config.num_virtual_tokens // len(token_ids))
        ids = torch.tensor((token_ids * repeats)[: config.num_virtual_tokens])
    with torch.no_grad():
        return embeddings(ids.to(weight.device)).detach().clone()


def _build_adapter(model: nn.Module, state: _ModelAdapters, config: Config) -> _Adapter:
    if isinstance(config, PromptTuningConfig):
        getter = getattr(model, "get_input_embeddings", None)
        embeddings = getter() if callable(getter) else None
        if not isinstance(embeddings, nn.Embedding):
            raise ValueError(
                f"model: prompt tuning needs a model whose get_input_embeddings() returns an nn.Embedding "
                f"(a transformers causal LM), got {type(model).__name__}"
            )
        weight = embeddings.weight
        prompt = PromptEmbedding(config.num_virtual_tokens, weight.shape[1], _prompt_init(model, config, embeddings),
                                 device=weight.device, dtype=weight.dtype)
        return _Adapter(config, prompt=prompt.train(model.training))
    paths = target_paths(model, config)
    adapter = _Adapter(config)
    originals = dict(_original_modules(model, state))
    for path in paths:
        base = originals[path]
        layer = _lora_layer(base, config) if isinstance(config, LoRAConfig) else _bottleneck_layer(path, base, config)
        adapter.layers[path] = layer.train(base.training)
    for path in paths:
        state.base.setdefault(path, originals[path])
    return adapter


# ------------------------------------------------------------------------------------------------------
# public API: adapters
# ------------------------------------------------------------------------------------------------------
def add_adapter(model: nn.Module, adapter_name: str, config: Config) -> nn.Module:
    """Add a named adapter to `model` without changing which adapter is active. The first adapter of a model
    becomes active and everything else is frozen (as apply does); later ones only add their own trainable
    parameters, so selective-fine-tuning choices made in between are kept."""
    _check_model(model)
    _check_adapter_name(adapter_name)
    if not isinstance(config, (LoRAConfig, AdapterConfig, PromptTuningConfig)):
        raise TypeError(f"config: expected a LoRAConfig, AdapterConfig or PromptTuningConfig, got {type(config).__name__}")
    state = _state(model)
    if state is not None and adapter_name in state.adapters:
        raise ValueError(f"adapter_name: {adapter_name!r} already exists (adapters: {sorted(state.adapters)})")
    first = state is None
    if first:
        state = _ModelAdapters()
    elif _any_merged(state):
        raise ValueError("model: its active adapter is merged; lowpeft.unmerge(model) before adding adapters")
    adapter = _build_adapter(model, state, config)
    if first:
        for param in model.parameters():
            param.requires_grad_(False)
        model.__dict__[_STATE_ATTRIBUTE] = state
    for param in _adapter_parameters(adapter, state):
        param.requires_grad_(True)
    state.adapters[adapter_name] = adapter
    if isinstance(config, PromptTuningConfig) and state.prompt_hook is None:
        state.prompt_hook = model.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True)
    if state.active is None:
        state.active = adapter_name
    _install(model, state, state.active if state.enabled else None)
    return model


def apply(model: nn.Module, config: Config, adapter_name: str = "default") -> nn.Module:
    """Add adapter `config` to `model` in place, make it the active adapter and freeze every parameter that
    is not one of its own (bias="all" / "lora_only" keep the chosen biases trainable). Returns `model`."""
    add_adapter(model, adapter_name, config)
    state = _state(model)
    for param in model.parameters():
        param.requires_grad_(False)
    set_adapter(model, adapter_name)
    if isinstance(config, LoRAConfig) and config.bias != "none":
        for name, param in model.named_parameters():
            owner = name.rpartition(".")[0]
            if name.endswith("bias") and (config.bias == "all" or owner in state.adapters[adapter_name].layers):
                param.requires_grad_(True)
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make `adapter_name` the active adapter (its layers go in place; its parameters are trainable)."""
    state = _require_state(model, "set_adapter")
    if adapter_name not in state.adapters:
        raise ValueError(f"adapter_name: expected one of {sorted(state.adapters)}, got {adapter_name!r}")
    if _any_merged(state) and adapter_name != state.active:
        raise ValueError("model: its active adapter is merged; lowpeft.unmerge(model) before switching adapters")
    state.active = adapter_name
    for param in _adapter_parameters(state.adapters[adapter_name], state):
        param.requires_grad_(True)
    if state.enabled:
        _install(model, state, adapter_name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Context in which `model` runs as the original model (the adapters' layers swapped out)."""
    state = _require_state(model, "disable_adapters")
    if _any_merged(state):
        raise ValueError("model: its active adapter is merged into the base weights; lowpeft.unmerge(model) first")
    if not state.enabled:
        yield model
        return
    state.enabled = False
    _install(model, state, None)
    try:
        yield model
    finally:
        # Only if the model still has this bookkeeping: merge_and_unload inside the block removes it, and the
        # adapter layers put back then would be orphans no call could switch or delete.
        if _state(model) is state:
            state.enabled = True
            _install(model, state, state.active)


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove adapter `adapter_name`. Deleting the active adapter leaves none active (the original modules run)
    until set_adapter; deleting the last one restores the original model entirely."""
    state = _require_state(model, "delete_adapter")
    if adapter_name not in state.adapters:
        raise ValueError(f"adapter_name: expected one of {sorted(state.adapters)}, got {adapter_name!r}")
    if state.active == adapter_name and _any_merged(state):
        raise ValueError(f"adapter_name: {adapter_name!r} is merged; lowpeft.unmerge(model) before deleting it")
    del state.adapters[adapter_name]
    if state.active == adapter_name:
        state.active = None
    _install(model, state, state.active if state.enabled else None)
    if not state.adapters:
        _forget(model, state)


def _forget(model: nn.Module, state: _ModelAdapters) -> None:
    if state.prompt_hook is not None:
        state.prompt_hook.remove()
    del model.__dict__[_STATE_ATTRIBUTE]


def active_adapter(model: nn.Module) -> Optional[str]:
    """The name of the active adapter, or None."""
    _check_model(model)
    state = _state(model)
    return None if state is None else state.active


def adapter_names(model: nn.Module) -> list[str]:
    _check_model(model)
    state = _state(model)
    return [] if state is None else list(state.adapters)


def adapter_config(model: nn.Module, adapter_name: Optional[str] = None) -> Config:
    """The config adapter `adapter_name` (default: the active one) was created with."""
    return _adapter(model, adapter_name).config


def adapter_layers(model: nn.Module, adapter_name: Optional[str] = None) -> dict:
    """{module path: lowpeft layer} of adapter `adapter_name` (default: the active one)."""
    return dict(_adapter(model, adapter_name).layers)


def adapter_prompt(model: nn.Module, adapter_name: Optional[str] = None) -> Optional[PromptEmbedding]:
    return _adapter(model, adapter_name).prompt


def _adapter(model: nn.Module, adapter_name: Optional[str]) -> _Adapter:
    state = _require_state(model, "this call")
    name = state.active if adapter_name is None else adapter_name
    if name not in state.adapters:
        raise ValueError(f"adapter_name: expected one of {sorted(state.adapters)}, got {name!r}")
    return state.adapters[name]


# ------------------------------------------------------------------------------------------------------
# public API: merging
# ------------------------------------------------------------------------------------------------------
def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _refuse_unmergeable(model: nn.Module, action: str) -> None:
    state = _state(model)
    if state is not None and not state.enabled:
        raise ValueError(
            f"model: {action} inside disable_adapters: the adapter's layers are swapped out there, so nothing would "
            "be merged (PEFT merges the adapter even then); exit the context first"
        )
    if state is not None and state.enabled and state.active is not None:
        config = state.adapters[state.active].config
        if not isinstance(config, LoRAConfig):
            raise ValueError(
                f"model: {action} applies to LoRA adapters; the active adapter {state.active!r} is a "
                f"{type(config).__name__}, which has no weight to merge into"
            )


def merge(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer's adapter into its base weight (W += s·B·A); forward then costs a plain Linear."""
    _check_model(model)
    _refuse_unmergeable(model, "merge")
    layers = _lora_layers(model)
    int8 = [name for name, layer in layers if isinstance(layer, Int8LoRALinear)]
    if int8:
        raise ValueError(
            f"model: merge cannot fold an adapter into an int8 base ({len(int8)} layers, e.g. {int8[0]!r}): the update "
            "is far smaller than an int8 step and would be rounded away; merge_and_unload replaces those layers by "
            "float nn.Linear modules holding the dequantized weight plus the update")
    for _, layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo merge() (exact up to rounding; in bf16 / fp16 up to that dtype's rounding, see LoRALinear.merge)."""
    _check_model(model)
    for _, layer in _lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active LoRA adapter and give back the model with its original module types (nn.Linear /
    Conv1D, the very module objects it had, their weights now merged); every other adapter is dropped. A layer over
    an int8 base (lowpeft.quantize_base) becomes a float nn.Linear of the base's source dtype holding the dequantized
    weight plus the update (an int8 weight cannot hold it); int8 layers without an adapter stay Int8Linear."""
    _check_model(model)
    _refuse_unmergeable(model, "merge_and_unload")
    state = _state(model)
    if state is not None:
        exported = {}
        if state.enabled and state.active is not None:
            for path, layer in state.adapters[state.active].layers.items():
                if isinstance(layer, Int8LoRALinear):
                    exported[path] = _plain_layer(layer)
                else:
                    layer.merge()
        _install(model, state, None)
        _forget(model, state)
        for path, linear in exported.items():
            _set_child(model, path, linear)
    for name, layer in _lora_layers(model):
        _set_child(model, name, _plain_layer(layer))
    return model


def _plain_layer(layer: LoRALinear) -> nn.Module:
    """The nn.Linear / Conv1D computing `layer`'s current function, its parameters as trainable as the base's."""
    plain = layer.to_conv1d() if layer.fan_in_fan_out else layer.to_linear()
    for new, old in zip(plain.parameters(), (layer.weight, layer.bias)):
        new.requires_grad_(old.requires_grad)
    return plain


def quantize_base(model: nn.Module, target_modules=ALL_LINEAR, exclude_modules=None, *,
                  backend: str = "auto") -> nn.Module:
    """Replace the targeted nn.Linear / Conv1D modules by frozen lowpeft.Int8Linear ones (int8 weights, one float32
    scale per output row: half a bf16 weight's memory), in place, before lowpeft.apply; LoRA then adapts them
    (Int8LoRALinear). target_modules / exclude_modules follow LoRAConfig's rule ("all-linear" leaves the output head
    alone); modules already Int8Linear are kept. Biases are shared, not copied."""
    _check_model(model)
    if _state(model) is not None:
        raise ValueError("model: quantize_base runs before lowpeft.apply / add_adapter (the adapters keep the "
                         "modules they replaced); got a model that already has lowpeft adapters")
    if hasattr(model, "peft_config") or any(hasattr(m, "base_layer") and hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("model: quantize_base runs on a model without adapters (its 'all-linear' would take PEFT's "
                         "lora_A / lora_B Linears for base layers); got one with PEFT LoRA layers: quantize the base "
                         "model, then add the adapter")
    config = LoRAConfig(target_modules=target_modules, exclude_modules=exclude_modules, backend=backend)
    for path in target_paths(model, config):
        module = model.get_submodule(path)
        if not isinstance(module, Int8Linear):
            _set_child(model, path, Int8Linear.from_linear(module, backend=backend))
    return model


# ------------------------------------------------------------------------------------------------------
# public API: parameter reports and selective fine-tuning
# ------------------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared parameters counted once (PEFT's get_nb_trainable_parameters).
    Adapters held outside the model (the inactive ones, or all of them inside disable_adapters) count in the total
    and not as trainable, as PEFT's inactive adapters, which stay in its model frozen, do."""
    _check_model(model)
    trainable = total = 0
    seen = set()
    for _, param in model.named_parameters():
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    state = _state(model)
    if state is not None:
        for adapter in state.adapters.values():
            for param in _adapter_parameters(adapter, state):
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print `trainable params: N || all params: M || trainable%: P` exactly as PEFT does."""
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


def _pattern_matches(pattern: str, name: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(f"{pattern}.")


def freeze(model: nn.Module, trainable: Sequence[str] = ()) -> nn.Module:
    """Freeze every parameter except those matching a pattern of `trainable`. A pattern is a shell-style glob
    over full parameter names ("*.layers.3.*", "lm_head.*") or, without wildcards, a parameter name or a
    module path whose parameters all stay trainable ("model.norm", "lm_head"); a tied parameter trains when any
    of its names matches. An int8 base (lowpeft.quantize_base: its weight and scales) stays frozen, as do integer
    parameters, which cannot train. A pattern matching nothing is a ValueError."""
    _check_model(model)
    if isinstance(trainable, str) or not all(isinstance(p, str) and p for p in trainable):
        raise TypeError(f"trainable: expected a list of name patterns, got {trainable!r}")
    # Every name of a tied parameter counts ("lm_head.weight" tied to the embeddings): it trains if any matches.
    named = list(model.named_parameters(remove_duplicate=False))
    untrainable = _untrainable_parameters(model)
    used, trains, chosen = set(), set(), {}
    for name, param in named:
        hit = [p for p in trainable if _pattern_matches(p, name)]
        used.update(hit)
        if param not in untrainable:
            trains.update(hit)
        chosen[param] = chosen.get(param, False) or bool(hit)
    unused = [p for p in trainable if p not in used]
    if unused:
        names = ", ".join(n for n, _ in list(model.named_parameters())[:12])
        raise ValueError(f"trainable: patterns {unused} match no parameter of {type(model).__name__} (names: {names}, ...)")
    frozen_only = [p for p in trainable if p not in trains]
    if frozen_only:
        raise ValueError(f"trainable: patterns {frozen_only} match only parameters that cannot train (an int8 base's "
                         "weight and scales, lowpeft.quantize_base, or integer parameters); adapt those layers with "
                         "LoRA instead")
    for param, train in chosen.items():
        param.requires_grad_(train and param not in untrainable)
    return model


def _untrainable_parameters(model: nn.Module) -> set:
    """The parameters selective fine-tuning leaves frozen: integer ones (neither float nor complex), and every int8
    base's weight and scales
(lowpeft.quantize_base: the scales are float, but an int8 base is frozen as a whole; its ops refuse a scale
    that requires grad)."""
    found = {param for param in model.parameters() if not (param.is_floating_point() or param.is_complex())}
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8LoRALinear, Int8AdapterLinear)):
            found.update((module.weight, module.weight_scale))
    return found


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks: the nn.ModuleList of same-type modules holding the most
    parameters (model.layers for Llama, transformer.h for GPT-2)."""
    best, best_size = None, -1
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) != 1:
                continue
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"model: found no nn.ModuleList of transformer blocks in {type(model).__name__}")
    return best


def unfreeze_last_blocks(model: nn.Module, n: int, head: bool = True) -> nn.Module:
    """Make the last `n` transformer blocks trainable, and the output head (get_output_embeddings()) with
    `head`. Nothing else changes: call freeze(model) first to train only these. Tied weights (GPT-2's head is
    its input embedding) train together, as they are one parameter; an int8 base stays frozen, as in freeze()."""
    _check_model(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    _, blocks = transformer_blocks(model)
    if n > len(blocks):
        raise ValueError(f"n: expected at most the model's {len(blocks)} transformer blocks, got {n}")
    untrainable = _untrainable_parameters(model)
    for block in list(blocks)[len(blocks) - n:]:
        for param in block.parameters():
            param.requires_grad_(param not in untrainable)
    if head:
        head_module = _output_head(model)
        if head_module is None:
            raise ValueError(
                f"head: {type(model).__name__} has no get_output_embeddings() head; pass head=False and name the "
                "head with freeze(model, trainable=[...])"
            )
        for param in head_module.parameters():
            param.requires_grad_(param not in untrainable)
    return model
