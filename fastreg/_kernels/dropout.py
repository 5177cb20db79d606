"""Dropout with a counter-based RNG. CONTRACT STUB: replaced by the dropout implementation.

mask_nbytes(n) -> int ; philox_blocks(n) -> int
dropout_forward(x, out, mask, p, scale, seed, offset, backend=None)
dropout_backward(dy, mask, dx, scale, backend=None)
dropout_mask(mask, n, p, seed, offset, backend=None)
"""
