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
from .io import adapter_tensors, save_adapter

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


def _sharding(model: nn.Module, tensors: dict) -> Optional[str]:
    """What shards the adapter across processes, or None: FSDP2 (DTensor parameters), FSDP1 (a
    FullyShardedDataParallel module anywhere in `model`: its flat parameters leave the layers' lora_A / lora_B as views
    of a local shard) or DeepSpeed ZeRO-3 (parameters carrying ds_id, their data partitioned away)."""
    zero3 = sorted(key for key, tensor in tensors.items() if hasattr(tensor, "ds_id"))
    if zero3:
        return f"DeepSpeed ZeRO-3 partitioned parameters: {_some(zero3)}"
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
        return "FSDP1 (FullyShardedDataParallel) flat parameters"
    dtensors = sorted(key for key, tensor in tensors.items() if isinstance(tensor, DTensor))
    return f"FSDP2 DTensor parameters: {_some(dtensors)}" if dtensors else None


def _some(keys: list) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


class SaveAdapterCallback(TrainerCallback):
    """Writes the model's lowpeft adapter with lowpeft.save_adapter into `<checkpoint>/<subfolder>` on every
    checkpoint Trainer saves (`<output_dir>/checkpoint-<global_step>/adapter/` by default) and into `directory`
    (default `<output_dir>/<subfolder>`) when training ends. `adapter_name` picks the adapter (default: the active
    one at each save). Only the processes that write Trainer's checkpoints write (TrainingArguments.should_save:
    the world's main process, or each node's with save_on_each_node). The model may be wrapped in DDP /
    DataParallel or torch.compile; adapters sharded across processes (FSDP2's DTensor parameters, FSDP1's flat
    parameters, DeepSpeed ZeRO-3's partitioned ones) are refused, since one process cannot gather them. Training start checks the model, so a model without lowpeft adapters
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
        sharding = _sharding(model, adapter_tensors(inner, self.adapter_name))
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
