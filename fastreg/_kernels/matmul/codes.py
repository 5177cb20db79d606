"""Codes of the matmul kernels: the activation codes are shared with the other families
(``common/codes.py``); GRAD_RELU_DROPOUT is the input-gradient epilogue's own."""
from ..common.codes import (  # noqa: F401  (re-exported)
    ACT_IDENTITY,
    ACT_LEAKY_RELU,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    ACTIVATIONS,
    activation_code,
)

#: The input-gradient epilogue's code for the gradient through a fused ReLU -> Dropout, from the
#: dropout's output (must match kernel.h FR_GRAD_RELU_DROPOUT; after the ACT_* codes).
GRAD_RELU_DROPOUT = 5
#: The names linear_backward_input_act takes: the activations, and "relu_dropout".
GRAD_CODES = {**ACTIVATIONS, "relu_dropout": GRAD_RELU_DROPOUT}
