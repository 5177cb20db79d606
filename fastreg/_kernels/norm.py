"""Batch norm and layer norm. CONTRACT STUB: replaced by the norm implementation.

x is (N, C) C-contiguous float32/float64; per-feature vectors are (C,), per-row stats (N,).
batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean, save_rstd,
                        momentum=0.1, eps=1e-5, backend=None)
batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps=1e-5, backend=None)
batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                   backend=None)
layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps=1e-5, backend=None)
layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate=True,
                   backend=None)
"""
