# SaveAdapterCallback: a transformers TrainerCallback that writes the lowpeft adapter (lowpeft.save_adapter: PEFT's
# adapter_config.json + adapter_model.safetensors, atomically) into every Trainer checkpoint and, when training
# ends, into the output directory. Trainer's own checkpoints hold the whole model's state dict, whose lora_A /
# lora_B keys from_pretrained drops, so without it nothing Trainer writes ships the adapter.
#
# Trade-off: the adapter goes into a subfolder (checkpoint-<step>/adapter/, <output_dir>/adapter/), not beside
# Trainer's files. No file name clashes, but transformers' from_pretrained takes any folder holding
# adapter_config.json for a PEFT adapter: in the checkpoint root it would make from_pretrained(checkpoint-<step>)
# load the adapter config's base model plus the adapter through PEFT instead of the checkpoint's own
# model.safetensors. transformers is imported with this module, which lowpeft imports only when
# lowpeft.SaveAdapterCallback is first touched; without transformers the class still imports (so
# `from lowpeft import *` works) and constructing it is an ImportError naming transformers.
from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Optional, Union

import torch
from torch import nn

from . import model as model_level
from .io import save_adapter, sharded_adapter_reason

try:
    from transformers import TrainerCallback
except ImportError as error:
    TrainerCallback, _TRANSFORMERS_ERROR = object, error
else:
    _TRANSFORMERS_ERROR = None

__all__ = ["SaveAdapterCallback"]

_WRAPPER_ATTRIBUTES = ("_orig_mod", "module")  # torch.compile's OptimizedModule; DDP, DataParallel


def _adapter_model(model) -> nn.Module:
    """The module holding the lowpeft adapters: `model` itself, or the one inside its DDP / DataParallel
    (.module) and torch.compile (._orig_mod) wrappers."""
    model_level._check_model(model)
    inner = model
    while not model_level.adapter_names(inner):
        wrapped = [getattr(inner, name) for name in _WRAPPER_ATTRIBUTES
                   if isinstance(getattr(inner, name, None), nn.Module)]
        if not wrapped:
            peft_note = ("; a model with PEFT adapters is saved by Trainer's own checkpoints"
                         if hasattr(inner, "peft_config") else "")
            raise ValueError(f"model: SaveAdapterCallback needs a model with lowpeft adapters (lowpeft.apply or "
                             f"lowpeft.load_adapter), got a {type(model).__name__} with none{peft_note}")
        inner = wrapped[0]
    return inner


def _sharding(model: nn.Module, inner: nn.Module, adapter_name: Optional[str]) -> Optional[str]:
    """What shards the adapter across processes, or None: FSDP1 sharding a unit that holds adapter layers (NO_SHARD,
    or FSDP1 around other parts only, leaves every process the whole adapter), or what lowpeft.io finds in the
    parameters themselves (FSDP2 DTensors, DeepSpeed ZeRO-3, shard-shaped FSDP1 views when the callback sees the
    model inside FSDP1's wrapper, as Trainer's callbacks do)."""
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

        layers = set(model_level.adapter_layers(inner, adapter_name).values())
        for module in model.modules():
            if (isinstance(module, FullyShardedDataParallel)
                    and module.sharding_strategy != ShardingStrategy.NO_SHARD
                    and any(sub in layers for sub in module.modules())):
                return f"FSDP1 ({module.sharding_strategy.name}) over the adapter's layers"
    return sharded_adapter_reason(inner, adapter_name)


class SaveAdapterCallback(TrainerCallback):
    """Writes the model's lowpeft adapter with lowpeft.save_adapter into `<checkpoint>/<subfolder>` on every
    checkpoint Trainer saves (`<output_dir>/checkpoint-<global_step>/adapter/` by default) and into `directory`
    (default `<output_dir>/<subfolder>`) when training ends. `adapter_name` picks the adapter (default: the active
    one at each save). Only the processes that write Trainer's checkpoints write (TrainingArguments.should_save:
    the world's main process, or each node's with save_on_each_node). The model may be wrapped in DDP /
    DataParallel or torch.compile; adapters sharded across processes (FSDP2's DTensor parameters, FSDP1 sharding
    the adapter's layers, DeepSpeed ZeRO-3's partitioned parameters) are refused, since one process cannot gather
    them; FSDP1 with NO_SHARD, or around other parts only, is not. Training start checks the model, so a model without lowpeft adapters
    fails before the first step rather than at the first checkpoint."""

    def __init__(self, directory: Optional[Union[str, os.PathLike]] = None, subfolder: str = "adapter",
                 adapter_name: Optional[str] = None):
        if _TRANSFORMERS_ERROR is not None:
            raise ImportError(f"lowpeft.SaveAdapterCallback is a transformers TrainerCallback and needs transformers "
                              f"(pip install transformers); importing it failed: {_TRANSFORMERS_ERROR}"
                              ) from _TRANSFORMERS_ERROR
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory: expected None, a str or an os.PathLike, got {type(directory).__name__}")
        if not isinstance(subfolder, str):
            raise TypeError(f"subfolder: expected a str, got {type(subfolder).__name__}")
        if not subfolder or PurePath(subfolder).is_absolute() or ".." in PurePath(subfolder).parts:
            raise ValueError(f"subfolder: expected a relative folder name inside each checkpoint (e.g. 'adapter'), "
                             f"got {subfolder!r}")
        if adapter_name is not None:
            model_level._check_adapter_name(adapter_name)
        super().__init__()
        self.directory = directory
        self.subfolder = subfolder
        self.adapter_name = adapter_name

    def _model_to_save(self, model) -> nn.Module:
        inner = _adapter_model(model)
        sharding = _sharding(model, inner, self.adapter_name)
        if sharding is not None:
            raise NotImplementedError(
                f"model: SaveAdapterCallback writes from one process and cannot gather adapter parameters sharded "
                f"across processes ({sharding}); gather the full adapter on one process and call "
                "lowpeft.save_adapter there")
        return inner

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._model_to_save(model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if not args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not checkpoint.is_dir():
            raise FileNotFoundError(
                f"SaveAdapterCallback: expected Trainer's checkpoint folder {str(checkpoint)!r}, found none (the "
                "callback writes into <output_dir>/checkpoint-<global_step>; hyperparameter-search runs, which "
                "checkpoint under <output_dir>/<run name>/, are not supported)")
        save_adapter(self._model_to_save(model), checkpoint / self.subfolder, self.adapter_name)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not args.should_save:
            return
        target = Path(args.output_dir) / self.subfolder if self.directory is None else Path(self.directory)
        save_adapter(self._model_to_save(model), target, self.adapter_name)
