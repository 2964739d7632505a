# The suite's one tolerance rule (DESIGN §6), used by every numerical test:
#   max|ours − ref64| ≤ 2 · max|torch_same_dtype − ref64| + atol(dtype) · max(1, max|ref64|)
# where ref64 is lowpeft.reference evaluated in float64 and torch_same_dtype the same reference evaluated
# in the inputs' dtype by plain PyTorch. Trade-off: a max-norm rule (as flash-attention uses) instead of an
# elementwise one, so a single element where PyTorch happens to round exactly cannot make a test flaky,
# while a kernel twice as inaccurate as PyTorch anywhere still fails. Overflow tests compare the NaN / ±Inf
# pattern alone, against the oracle rounded to the tested dtype (assert_non_finite_pattern_matches).
import torch

ATOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-6,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}


def assert_matches_oracle(ours, torch_same_dtype, ref64, name="output"):
    """Check `ours` against the float64 oracle with the suite's rule; NaN/Inf must sit where ref64 has them."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != oracle's {tuple(ref64.shape)}"
    ours64, same64, ref = ours.detach().double().cpu(), torch_same_dtype.detach().double().cpu(), ref64.detach().double().cpu()
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours64), finite), f"{name}: non-finite values where the oracle has none (or vice versa)"
    if not finite.all():
        assert torch.equal(torch.isnan(ours64), torch.isnan(ref)), f"{name}: NaN pattern differs from the oracle"
        ours64, same64, ref = ours64[finite], same64[finite], ref[finite]
    if ref.numel() == 0:
        return
    err = (ours64 - ref).abs().max().item()
    base = (same64 - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    allowed = 2 * base + ATOL[ours.dtype] * scale
    assert err <= allowed, f"{name}: max error {err:.3e} > allowed {allowed:.3e} (torch {ours.dtype}: {base:.3e}, scale {scale:.3e})"


def poison_(tensor):
    """Fill a tensor with NaN (or a sentinel for integers) so an unwritten element cannot pass a test."""
    if tensor.is_floating_point():
        return tensor.fill_(float("nan"))
    return tensor.fill_(-12345)


def assert_non_finite_pattern_matches(ours, ref64, name="output"):
    """NaN, +Inf and -Inf exactly where the float64 oracle has them once rounded to `ours`' dtype (a value past that
    dtype's range reads as Inf there). The inputs must keep every exact intermediate far from the overflow threshold:
    then any order of operations passes whose intermediates overflow only where the exact result does."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != oracle's {tuple(ref64.shape)}"
    got, expected = ours.detach().cpu(), ref64.detach().to(ours.dtype).cpu()
    for kind, where in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        assert torch.equal(where(got), where(expected)), (
            f"{name}: {kind} at {where(got).nonzero().tolist()}, the oracle's at {where(expected).nonzero().tolist()}")
