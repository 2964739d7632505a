# lowpeft.ops: the functional ops (one file each), registered as torch.library lowpeft:: ops.
from ._dispatch import backends, get_backend, set_backend
from .lora_linear import lora_linear

__all__ = ["lora_linear", "backends", "get_backend", "set_backend"]
