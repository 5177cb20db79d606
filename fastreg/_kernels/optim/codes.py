"""Codes of the fused optimizer kernels: algorithms, flag bits and the slots of the
coefficient vector ``hp``. Every backend imports them from here; ``step.h`` mirrors them for C
(a test checks the two agree). The per-element update maths is in ``maths.py`` (Numba and CUDA)
and ``step_impl.h`` (C)."""

# Algorithm codes and flag bits: mirror fastreg/_kernels/optim/step.h (a test checks they agree).
SGD, ADAM, RMSPROP, ADAGRAD, ADADELTA = 0, 1, 2, 3, 4
MAXIMIZE, MOMENTUM, NESTEROV, FIRST_STEP, AMSGRAD, DECOUPLED, CENTERED = 1, 2, 4, 8, 16, 32, 64
# Coefficient slots of hp; A..G mean different things per algorithm (see step.h).
HP_LR, HP_WD, HP_L1, HP_L2X2, HP_A, HP_B, HP_C, HP_D, HP_E, HP_F, HP_G = range(11)
HP_LEN = 11
