# lowpeft.kernels: raw Triton kernels and their launchers (no autograd, no nn.Module).
#
# Trade-off: this package imports nothing at package import time, so `import lowpeft` never imports
# triton; the op layer imports a launcher module (e.g. lowpeft.kernels.lora_linear) the first time a
# triton-backend call runs.
