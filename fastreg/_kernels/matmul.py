"""Linear-layer products. CONTRACT STUB: replaced by the matmul implementation.

linear_forward(x, weight, bias, out, activation=ACT_IDENTITY, slope=0.01, backend=None) -> out
    out[N, M] = act(x[N, K] @ weight[M, K].T + bias[M]); bias may be None.
linear_backward_input(dy, weight, dx, backend=None) -> dx
    dx[N, K] = dy[N, M] @ weight[M, K]   (overwrites dx)
linear_backward_weight(dy, x, dweight, dbias, accumulate=True, backend=None) -> None
    dweight[M, K] (+)= dy.T @ x; dbias[M] (+)= dy.sum(0) fused in the same pass; dbias may be None.
"""
