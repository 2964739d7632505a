# lowpeft.ops: the functional ops (one file each), registered as torch.library lowpeft:: ops.
from ._dispatch import backends, get_backend, set_backend
from .bottleneck_adapter import bottleneck_adapter
from .lora_linear import lora_linear

__all__ = ["lora_linear", "bottleneck_adapter", "backends", "get_backend", "set_backend"]
