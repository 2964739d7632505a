# lowpeft.nn: drop-in modules built on lowpeft.ops.
from .adapter import AdapterLinear, BottleneckAdapter
from .lora_linear import LoRALinear

__all__ = ["LoRALinear", "BottleneckAdapter", "AdapterLinear"]
