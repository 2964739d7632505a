# lowpeft.nn: drop-in modules built on lowpeft.ops.
from .lora_linear import LoRALinear

__all__ = ["LoRALinear"]
