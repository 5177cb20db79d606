"""Activations and fused softmax + cross-entropy. CONTRACT STUB: replaced by the implementation.

activation_forward(x, out, activation, slope=0.01, backend=None)
activation_backward(dy, y, dx, activation, slope=0.01, backend=None)
softmax_cross_entropy_forward(logits, target, probs, label_smoothing=0.0, backend=None) -> float
softmax_cross_entropy_backward(probs, target, dlogits, label_smoothing=0.0, grad_scale=None,
                               backend=None)
"""
