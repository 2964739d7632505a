# save_adapter / load_adapter in PEFT's on-disk format: a directory holding adapter_config.json and
# adapter_model.safetensors, with PEFT's tensor names (base_model.model.<module path>.lora_A.weight, ...,
# prompt_embeddings for prompt tuning), so stock PEFT loads lowpeft's LoRA and prompt adapters and lowpeft
# loads PEFT's. Bottleneck adapters use the same two files with peft_type "LOWPEFT_BOTTLENECK_ADAPTER",
# which PEFT refuses with its own error.
#
# Trade-off: saving writes a complete new directory beside the target, fsyncs it, then swaps it in with
# renames, so a crash never leaves a half-written adapter under the target name (at worst the old and the
# new complete copies both sit beside it under hidden names). A target that also holds other files (PEFT's
# README.md; users save the tokenizer there too) cannot be swapped whole without moving those files, so there
# the two files are staged inside it and renamed over their old versions one after the other: each is always
# whole, the pair changes within microseconds rather than at once. Loading validates every key and shape against
# the model before it changes any parameter, and undoes the adapter it added if the file does not fit.
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from . import model as model_level
from .config import (
    ALL_LINEAR,
    LoRAConfig,
    PromptTuningConfig,
    adapter_dtype_name,
    adapter_peft_dict,
    config_from_peft_dict,
    lora_peft_dict,
    prompt_peft_dict,
)

__all__ = ["save_adapter", "load_adapter", "AdapterFileNotFoundError", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME}
_PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"


# ------------------------------------------------------------------------------------------------------
# the tensors of an adapter under PEFT's names
# ------------------------------------------------------------------------------------------------------
def _bias_tensors(model: nn.Module, layers: dict, mode: str) -> dict:
    found = {}
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf != "bias":
            continue
        if owner in layers:
            found[f"{_PREFIX}{owner}.base_layer.bias"] = param
        elif mode == "all":
            found[f"{_PREFIX}{name}"] = param
    return found


def adapter_tensors(model: nn.Module, adapter_name: Optional[str] = None) -> dict:
    """{PEFT key: parameter} of an adapter (the live parameters, not copies)."""
    config = model_level.adapter_config(model, adapter_name)
    if isinstance(config, PromptTuningConfig):
        return {PROMPT_KEY: model_level.adapter_prompt(model, adapter_name).weight}
    layers = model_level.adapter_layers(model, adapter_name)
    tensors = {}
    if isinstance(config, LoRAConfig):
        for path, layer in layers.items():
            tensors[f"{_PREFIX}{path}.lora_A.weight"] = layer.lora_A
            tensors[f"{_PREFIX}{path}.lora_B.weight"] = layer.lora_B
        if config.bias != "none":
            tensors.update(_bias_tensors(model, layers, config.bias))
        return tensors
    for path, layer in layers.items():
        shared = {id(layer_param) for layer_param in (getattr(layer, "weight", None), getattr(layer, "bias", None))}
        base = model_level._state(model).base[path]
        shared.update(id(p) for p in base.parameters())
        for name, param in layer.named_parameters():
            if id(param) not in shared:
                tensors[f"{_PREFIX}{path}.{name}"] = param
    return tensors


def _expected_shapes(model: nn.Module, adapter_name: Optional[str]) -> dict:
    """{PEFT key: shape} of the adapter's weight matrices, from the layers' own sizes (r, in / out features,
    bottleneck, dim, virtual tokens)."""
    config = model_level.adapter_config(model, adapter_name)
    if isinstance(config, PromptTuningConfig):
        prompt = model_level.adapter_prompt(model, adapter_name)
        return {PROMPT_KEY: (prompt.num_virtual_tokens, prompt.dim)}
    shapes = {}
    for path, layer in model_level.adapter_layers(model, adapter_name).items():
        if isinstance(config, LoRAConfig):
            shapes[f"{_PREFIX}{path}.lora_A.weight"] = (layer.r, layer.in_features)
            shapes[f"{_PREFIX}{path}.lora_B.weight"] = (layer.out_features, layer.r)
        else:
            prefix, adapter = (f"{path}.adapter", layer.adapter) if hasattr(layer, "adapter") else (path, layer)
            shapes[f"{_PREFIX}{prefix}.down_weight"] = (adapter.bottleneck, adapter.dim)
            shapes[f"{_PREFIX}{prefix}.up_weight"] = (adapter.dim, adapter.bottleneck)
    return shapes


def sharded_adapter_reason(model: nn.Module, adapter_name: Optional[str] = None) -> Optional[str]:
    """Why the adapter's parameters in this process are not the whole adapter, or None: FSDP2's DTensors, DeepSpeed
    ZeRO-3's partitioned parameters (ds_id), or weights whose shapes are not the layers' (FSDP1's flat-parameter
    views of a local shard)."""
    tensors = adapter_tensors(model, adapter_name)
    zero3 = sorted(key for key, tensor in tensors.items() if hasattr(tensor, "ds_id"))
    if zero3:
        return f"DeepSpeed ZeRO-3 partitioned parameters: {_some(zero3)}"
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        dtensors = sorted(key for key, tensor in tensors.items() if isinstance(tensor, DTensor))
        if dtensors:
            return f"FSDP2 DTensor parameters: {_some(dtensors)}"
    wrong = [f"{key} {tuple(tensors[key].shape)} (the layer's {shape})"
             for key, shape in _expected_shapes(model, adapter_name).items()
             if key in tensors and tuple(tensors[key].shape) != shape]
    return f"parameters shaped as local shards (FSDP1 flat parameters?): {_some(wrong)}" if wrong else None


def _some(items: list) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def _config_dict(model: nn.Module, adapter_name: Optional[str]) -> dict:
    config = model_level.adapter_config(model, adapter_name)
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    if isinstance(config, PromptTuningConfig):
        hf_config = getattr(model, "config", None)
        prompt = model_level.adapter_prompt(model, adapter_name)
        return prompt_peft_dict(config, prompt.dim, getattr(hf_config, "num_hidden_layers", None),
                                getattr(hf_config, "num_attention_heads", None), name_or_path)
    layers = model_level.adapter_layers(model, adapter_name)
    targets = sorted(layers) if config.target_modules == ALL_LINEAR else config.target_modules
    if isinstance(config, LoRAConfig):
        fan_in_fan_out = any(getattr(layer, "fan_in_fan_out", False) for layer in layers.values())
        return lora_peft_dict(config, targets, fan_in_fan_out, name_or_path)
    return adapter_peft_dict(config, targets, name_or_path)


class AdapterFileNotFoundError(FileNotFoundError, ValueError):
    """load_adapter's directory lacks one of the two files: a FileNotFoundError as open() would raise, and a
    ValueError like every other bad argument of lowpeft's."""


# ------------------------------------------------------------------------------------------------------
# atomic directory write
# ------------------------------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_directory(staged: Path, target: Path) -> None:
    """Swap the complete directory `staged` in as `target` (both on one file system)."""
    if not target.exists():
        os.rename(staged, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(retired)
    os.rename(target, retired)
    os.rename(staged, target)
    _fsync_path(target.parent)
    shutil.rmtree(retired)


def _shared(target: Path) -> bool:
    """Whether saving to `target` must leave other entries in place (replace file by file): it holds anything but
    the adapter's two files, or it is the working directory (which cannot be renamed)."""
    if not target.exists():
        return False
    if target.resolve() == Path.cwd().resolve():
        return True
    return any(entry.name not in _ADAPTER_FILES for entry in target.iterdir())


def _replace_files(staged: Path, target: Path, names) -> None:
    """Rename each staged file over its namesake in `target`, leaving the rest of `target` alone."""
    for name in names:
        os.replace(staged / name, target / name)
    _fsync_path(target)
    os.rmdir(staged)


def save_adapter(model: nn.Module, directory: Union[str, os.PathLike], adapter_name: Optional[str] = None) -> Path:
    """Save adapter `adapter_name` (default: the active one) of `model` to `directory` in PEFT's format:
    adapter_config.json + adapter_model.safetensors. Atomic: both files are written and fsynced first, so a crash
    while writing leaves the previous save untouched. A new directory, or one holding only those two files, is
    then swapped in whole (the pair changes at once); a directory that holds anything else (PEFT's README.md, a
    tokenizer, the base model), or the working directory, keeps it: there the files are staged inside it and each
    is renamed over its old version (each always whole; a crash between the two renames, microseconds apart,
    would pair the new weights with the previous config)."""
    from safetensors.torch import save_file

    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"directory: expected a directory path, got an existing file {str(target)!r}")
    sharded = sharded_adapter_reason(model, adapter_name)
    if sharded is not None:
        raise ValueError(f"model: the adapter is sharded across processes here ({sharded}); gather the full adapter "
                         "on one process and save it there")
    tensors = {key: param.detach().to("cpu").contiguous().clone() for key, param in
               adapter_tensors(model, adapter_name).items()}
    config = _config_dict(model, adapter_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not tempfile.mkdtemp: the directory gets the user's umask (0755 as a rule, as PEFT's), not 0700.
    staged = (target if _shared(target) else target.parent) / f".{target.name}.tmp-{secrets.token_hex(8)}"
    staged.mkdir()
    try:
        save_file(tensors, str(staged / WEIGHTS_NAME), metadata={"format": "pt"})
        with open(staged / CONFIG_NAME, "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            _fsync_path(staged / name)
        _fsync_path(staged)
        # Decided again here, right before the swap: a file that appeared in the target meanwhile must stay.
        if _shared(target):
            _replace_files(staged, target, (WEIGHTS_NAME, CONFIG_NAME))
        else:
            _replace_directory(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    _fsync_path(target.parent)
    return target


# ------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------
def _module_of(key: str) -> str:
    if key == PROMPT_KEY:
        return "prompt"
    path = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
    for marker in (".lora_A.", ".lora_B.", ".base_layer."):
        if marker in path:
            return path.split(marker)[0]
    return path.rpartition(".")[0]


def _describe(keys) -> str:
    keys = sorted(keys)
    shown = "; ".join(f"module {_module_of(k)!r} ({k})" for k in keys[:5])
    return shown + (f"; ... ({len(keys)} in all)" if len(keys) > 5 else "")


def _check_fits(expected: dict, found: dict, directory: Path) -> None:
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {_describe(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_describe(unexpected)}")
        raise ValueError(f"directory: the adapter in {str(directory)!r} does not fit the model; " + " | ".join(parts))
    for key, param in expected.items():
        tensor = found[key]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"directory: the adapter in {str(directory)!r} does not fit module {_module_of(key)!r}: {key} "
                f"expected shape {tuple(param.shape)}, got {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"directory: {key} in {str(directory)!r} expected a floating-point tensor, got {tensor.dtype}")


def _saved_base_weights(model: nn.Module, adapter_name: str, found: dict) -> dict:
    """{PEFT key: base parameter} of the adapted layers whose base weight (and bias) the file holds: PEFT's
    save_pretrained writes `<layer>.base_layer.weight` / `.bias` for a LoRA on an embedding-like layer (lm_head, with
    save_embedding_layers="auto", its default), and its loader puts them back into the base layer, so lowpeft does
    the same. A bias key the layer has no bias for stays unexpected (a named error)."""
    weights = {}
    for path, layer in model_level.adapter_layers(model, adapter_name).items():
        for leaf in ("weight", "bias"):
            key = f"{_PREFIX}{path}.base_layer.{leaf}"
            if key in found and getattr(layer, leaf, None) is not None:
                if not getattr(layer, leaf).is_floating_point():
                    raise ValueError(
                        f"directory: {key} holds a float base weight for {path!r}, whose base is int8 "
                        "(lowpeft.quantize_base); load the adapter into the float model and quantize after, or leave "
                        "that layer unquantized")
                weights[key] = getattr(layer, leaf)
    return weights


def _same_adapter(model: nn.Module, adapter_name: str, config) -> None:
    existing = model_level.adapter_config(model, adapter_name)
    fields = [f for f in ("r", "alpha", "dropout", "use_rslora", "bias", "bottleneck", "activation", "scale",
                          "num_virtual_tokens") if hasattr(config, f)]
    differ = [f"{f}: model {getattr(existing, f, None)!r} vs file {getattr(config, f)!r}" for f in fields
              if type(existing) is not type(config) or getattr(existing, f) != getattr(config, f)]
    if type(existing) is not type(config):
        differ.insert(0, f"kind: model {type(existing).__name__} vs file {type(config).__name__}")
    if differ:
        raise ValueError(f"adapter_name: the model's adapter {adapter_name!r} differs from the file's: {'; '.join(differ)}")


def load_adapter(model: nn.Module, directory: Union[str, os.PathLike], adapter_name: str = "default",
                 backend: str = "auto", adapter_dtype: Optional[str] = None) -> nn.Module:
    """Load an adapter saved by lowpeft or by PEFT (LoRA, prompt tuning) into `model` as `adapter_name`.

    When `model` has no adapter of that name, one is added from the file's config (lowpeft.apply: it becomes
    active and trainable, everything else is frozen); when it has one, its configuration must agree with the
    file's. Every key and shape is checked first; a file that does not fit is a ValueError naming the module. A base
    weight (and bias) the file holds for an adapted layer (PEFT writes lm_head's by default) is loaded into that
    layer, as PEFT does.
    `backend` is the added layers' backend (lowpeft.set_backend's names; not part of the file); `adapter_dtype`
    the added LoRA layers' factor dtype (LoRAConfig.adapter_dtype; not part of the file either)."""
    from safetensors.torch import load_file

    model_level._check_model(model)
    adapter_dtype = adapter_dtype_name(adapter_dtype)
    source = Path(directory)
    config_path, weights_path = source / CONFIG_NAME, source / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AdapterFileNotFoundError(f"directory: expected {path.name} in {str(source)!r}, found none")
    with open(config_path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"directory: {str(config_path)!r} is not valid JSON ({error})") from None
    config = config_from_peft_dict(data, str(config_path))
    if not isinstance(config, PromptTuningConfig):
        config = dataclasses.replace(config, backend=backend)
    if isinstance(config, LoRAConfig):
        config = dataclasses.replace(config, adapter_dtype=adapter_dtype)
    elif adapter_dtype is not None:
        raise ValueError(f"adapter_dtype: applies to LoRA adapters; {str(config_path)!r} holds a "
                         f"{type(config).__name__}, got adapter_dtype={adapter_dtype!r}")
    found = load_file(str(weights_path))
    added = adapter_name not in model_level.adapter_names(model)
    if added:
        # Every adapter's parameters too, not only the model's: inside disable_adapters they are swapped out, and
        # the rollback's set_adapter(previous) would otherwise leave the previous adapter trainable.
        known = list(model.parameters()) + [param for name in model_level.adapter_names(model)
                                            for layer in model_level.adapter_layers(model, name).values()
                                            for param in layer.parameters()]
        snapshot = [(param, param.requires_grad) for param in dict.fromkeys(known)]
        previous = model_level.active_adapter(model)
        model_level.apply(model, config, adapter_name)
    else:
        _same_adapter(model, adapter_name, config)
        layers = model_level.adapter_layers(model, adapter_name).values()
        existing = {layer.lora_A.dtype for layer in layers if hasattr(layer, "lora_A")}
        if adapter_dtype is not None and existing != {getattr(torch, adapter_dtype)}:
            raise ValueError(f"adapter_dtype: {adapter_dtype!r} applies when load_adapter adds the adapter; the model's "
                             f"{adapter_name!r} exists with factors in {sorted(str(d) for d in existing)}")
        if any(getattr(layer, "merged", False) for layer in layers):
            raise ValueError(f"adapter_name: {adapter_name!r} is merged into the base weights; lowpeft.unmerge(model) "
                             "before loading into it")
    written = []
    try:
        expected = adapter_tensors(model, adapter_name)
        if isinstance(config, LoRAConfig):
            expected.update(_saved_base_weights(model, adapter_name, found))
        _check_fits(expected, found, source)
        # Every tensor converted before the first write (an out-of-memory or device error writes nothing); a write
        # that still fails puts back what earlier writes replaced.
        staged = {key: found[key].to(device=param.device, dtype=param.dtype) for key, param in expected.items()}
        with torch.no_grad():
            for key, param in expected.items():
                # The backup on the CPU: on a GPU a second copy of a large base weight (PEFT's lm_head) could be the
                # allocation that fails.
                written.append((param, param.detach().to("cpu", copy=True)))
                param.copy_(staged[key])
    except BaseException:
        with torch.no_grad():
            for param, old in reversed(written):
                param.copy_(old)
        if added:
            model_level.delete_adapter(model, adapter_name)
            if previous is not None:
                model_level.set_adapter(model, previous)
            for param, flag in snapshot:
                param.requires_grad_(flag)
        raise
    return model
