# The pure-PyTorch oracle for every lowpeft op, and the one definition of the dropout mask.
#
# Every backend (triton, cuda, cpu, torch) is checked against these functions evaluated in float64.
# Trade-off: the functions favour being obviously right over being fast; the dropout mask in particular
# is computed here with 64-bit integer tensor arithmetic (a Philox-4x32-10 emulation), which is slow but
# bit-exact with Triton's `tl.philox`, so every backend can reproduce the very same mask from a seed
# without storing it.
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "activation_forward",
    "activation_derivative",
    "dropout_threshold",
    "dropout_keep_mask",
    "lora_linear",
    "lora_linear_backward",
    "bottleneck_adapter",
    "bottleneck_adapter_backward",
]

_MASK32 = 0xFFFFFFFF
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def _umul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a Python uint32 constant and an int64 tensor of uint32 values."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = b * a_lo  # < 2**48
    mid = b * a_hi + (lo_part >> 16)  # < 2**49
    high = mid >> 16
    low = ((mid & 0xFFFF) << 16) | (lo_part & 0xFFFF)
    return high & _MASK32, low & _MASK32


def philox_words(seed: int, counter0: torch.Tensor, counter1: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four output words of Philox-4x32-10 for counters (counter0, counter1, 0, 0) and a 64-bit key.

    Bit-exact with `tl.philox(seed, counter0.to(tl.uint32), counter1.to(tl.uint32), 0, 0)`.
    """
    key0 = seed & _MASK32
    key1 = (seed >> 32) & _MASK32
    c0 = counter0.to(torch.int64) & _MASK32
    c1 = counter1.to(torch.int64) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _umul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _umul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ key0, lo_b, hi_a ^ c3 ^ key1, lo_a
        key0 = (key0 + _PHILOX_KEY_A) & _MASK32
        key1 = (key1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def dropout_draws(seed: int, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """The uint32 draw (as int64) of element (row, col): word col % 4 of Philox(seed; counters col // 4, row).
    One Philox evaluation serves four neighbouring columns, so regenerating the mask costs a quarter of the
    integer work of one call per element."""
    words = philox_words(seed, torch.div(col, 4, rounding_mode="floor"), row)
    return torch.stack(words, dim=-1).gather(-1, (col % 4).unsqueeze(-1)).squeeze(-1)


def dropout_threshold(p: float) -> int:
    """The uint32 threshold below which a Philox draw drops an element: keep iff draw >= threshold."""
    return min(int(p * 4294967296.0), _MASK32)


def dropout_keep_mask(seed: int, rows: int, cols: int, p: float, device=None) -> torch.Tensor:
    """The keep mask (bool [rows, cols]) every backend regenerates from `seed`: element (t, k) is kept iff
    word k % 4 of Philox(seed; counters k // 4, t, 0, 0) >= dropout_threshold(p). No backend ever stores it."""
    if p == 0.0:
        return torch.ones(rows, cols, dtype=torch.bool, device=device)
    row = torch.arange(rows, dtype=torch.int64, device=device).unsqueeze(1).expand(rows, cols)
    col = torch.arange(cols, dtype=torch.int64, device=device).unsqueeze(0).expand(rows, cols)
    return dropout_draws(int(seed), row, col) >= dropout_threshold(p)


def _dropped(x: torch.Tensor, keep_mask: torch.Tensor | None, p: float) -> torch.Tensor:
    if keep_mask is None or p == 0.0:
        return x
    return x * keep_mask.to(x.dtype) / (1.0 - p)


def lora_linear(x, weight, bias, lora_A, lora_B, scaling, keep_mask=None, dropout_p=0.0):
    """y = x Wᵀ + b + s · ((x ⊙ m / (1-p)) Aᵀ) Bᵀ, for x of any leading dimensions.

    `keep_mask` (bool, x's shape or [T, K]) is the dropout mask; None means no dropout.
    """
    x2 = x.reshape(-1, x.shape[-1])
    shrink = _dropped(x2, None if keep_mask is None else keep_mask.reshape(x2.shape), dropout_p) @ lora_A.t()
    y = x2 @ weight.t() + scaling * (shrink @ lora_B.t())
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def lora_linear_backward(grad_out, x, weight, lora_A, lora_B, scaling, keep_mask=None, dropout_p=0.0):
    """Closed-form gradients of `lora_linear` (DESIGN §2): returns (dx, dA, dB, dW, db), dx shaped like x."""
    x2 = x.reshape(-1, x.shape[-1])
    g = grad_out.reshape(-1, weight.shape[0])
    mask = None if keep_mask is None else keep_mask.reshape(x2.shape)
    x_dropped = _dropped(x2, mask, dropout_p)
    shrink = x_dropped @ lora_A.t()
    d_shrink = scaling * (g @ lora_B)
    d_lora_B = scaling * (g.t() @ shrink)
    dx = g @ weight + _dropped(d_shrink @ lora_A, mask, dropout_p)
    d_lora_A = d_shrink.t() @ x_dropped
    d_weight = g.t() @ x2
    d_bias = g.sum(0)
    return dx.reshape(x.shape), d_lora_A, d_lora_B, d_weight, d_bias


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The int8 base's weight Ŵ = qweight · scale[:, None], exact in float64, then rounded once to `dtype`."""
    return (qweight.to(torch.float64) * scale.to(torch.float64)[:, None]).to(dtype)


def int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, scaling, keep_mask=None, dropout_p=0.0):
    """lora_linear over the int8 base: the weight is dequantize_int8(qweight, scale) in x's dtype."""
    return lora_linear(x, dequantize_int8(qweight, scale, x.dtype), bias, lora_A, lora_B, scaling, keep_mask,
                       dropout_p)


def activation_forward(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "relu":
        return F.relu(z)
    if activation == "silu":
        return F.silu(z)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def activation_derivative(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z) in closed form (relu' taken as 0 at 0, as PyTorch does)."""
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return cdf + z * pdf
    if activation == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        inner = c * (z + 0.044715 * z**3)
        t = torch.tanh(inner)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * z * z)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "silu":
        sig = torch.sigmoid(z)
        return sig * (1.0 + z * (1.0 - sig))
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, activation="gelu", scale=1.0):
    """out = h + s · (act(h W_downᵀ + b_down) W_upᵀ + b_up), for h of any leading dimensions."""
    z = h @ down_weight.t()
    if down_bias is not None:
        z = z + down_bias
    up = activation_forward(z, activation) @ up_weight.t()
    if up_bias is not None:
        up = up + up_bias
    return h + scale * up


def bottleneck_adapter_backward(grad_out, h, down_weight, down_bias, up_weight, activation="gelu", scale=1.0):
    """Closed-form gradients of `bottleneck_adapter` (DESIGN §2): (dh, dW_down, db_down, dW_up, db_up)."""
    h2 = h.reshape(-1, h.shape[-1])
    g = grad_out.reshape(h2.shape)
    z = h2 @ down_weight.t()
    if down_bias is not None:
        z = z + down_bias
    a = activation_forward(z, activation)
    # dz = s · (g W_up) ⊙ act'(z), the scale applied last: first, s · g W_up could overflow where act'(z) = 0.
    d_z = (g @ up_weight) * activation_derivative(z, activation) * scale
    dh = g + d_z @ down_weight
    return dh.reshape(h.shape), d_z.t() @ h2, d_z.sum(0), scale * (g.t() @ a), scale * g.sum(0)
