# lowpeft.ops: the functional ops (one file each), registered as torch.library lowpeft:: ops.
from ._dispatch import backends, get_backend, set_backend
from .bottleneck_adapter import bottleneck_adapter
from .dequantize_int8 import dequantize_int8, quantize_int8
from .int8_linear import int8_linear
from .int8_lora_linear import int8_lora_linear
from .lora_linear import lora_linear

__all__ = ["lora_linear", "bottleneck_adapter", "int8_lora_linear", "int8_linear", "quantize_int8", "dequantize_int8",
           "backends", "get_backend", "set_backend"]
