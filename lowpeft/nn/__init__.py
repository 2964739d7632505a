# lowpeft.nn: drop-in modules built on lowpeft.ops.
from .adapter import AdapterLinear, BottleneckAdapter
from .int8_linear import Int8AdapterLinear, Int8Linear, Int8LoRALinear
from .lora_linear import LoRALinear

__all__ = ["LoRALinear", "BottleneckAdapter", "AdapterLinear", "Int8Linear", "Int8LoRALinear", "Int8AdapterLinear"]
