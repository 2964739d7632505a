# lowpeft: fused PEFT kernels (LoRA, bottleneck adapters) as drop-in PyTorch modules, plus the everyday PEFT
# tooling around them (configs, apply / merge, PEFT-format save / load, prompt tuning, selective fine-tuning).
#
# Trade-off: public names are resolved lazily (PEP 562 __getattr__), so `import lowpeft` imports torch and
# nothing else heavy: no triton, no transformers or peft, no compiled extension, no GPU query. Touching
# SaveAdapterCallback (a transformers TrainerCallback) imports transformers; no other name does.
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LoRALinear": "lowpeft.nn.lora_linear",
    "Int8Linear": "lowpeft.nn.int8_linear",
    "Int8LoRALinear": "lowpeft.nn.int8_linear",
    "Int8AdapterLinear": "lowpeft.nn.int8_linear",
    "BottleneckAdapter": "lowpeft.nn.adapter",
    "AdapterLinear": "lowpeft.nn.adapter",
    "PromptEmbedding": "lowpeft.nn.prompt",
    "LoRAConfig": "lowpeft.config",
    "AdapterConfig": "lowpeft.config",
    "PromptTuningConfig": "lowpeft.config",
    "apply": "lowpeft.model",
    "trainable_parameters": "lowpeft.model",
    "print_trainable_parameters": "lowpeft.model",
    "merge": "lowpeft.model",
    "unmerge": "lowpeft.model",
    "merge_and_unload": "lowpeft.model",
    "quantize_base": "lowpeft.model",
    "freeze": "lowpeft.model",
    "unfreeze_last_blocks": "lowpeft.model",
    "add_adapter": "lowpeft.model",
    "set_adapter": "lowpeft.model",
    "disable_adapters": "lowpeft.model",
    "delete_adapter": "lowpeft.model",
    "active_adapter": "lowpeft.model",
    "adapter_names": "lowpeft.model",
    "save_adapter": "lowpeft.io",
    "load_adapter": "lowpeft.io",
    "AdapterFileNotFoundError": "lowpeft.io",
    "SaveAdapterCallback": "lowpeft.trainer_callback",
    "from_peft": "lowpeft.peft_interop",
    "set_backend": "lowpeft.ops._dispatch",
    "get_backend": "lowpeft.ops._dispatch",
    "backends": "lowpeft.ops._dispatch",
}

__all__ = sorted(_EXPORTS) + ["ops", "nn", "reference", "__version__"]


def __getattr__(name: str):
    if name in ("ops", "nn", "reference"):
        return importlib.import_module(f"lowpeft.{name}")
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lowpeft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
