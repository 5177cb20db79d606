/* Fused in-place optimizer updates over one flat range [lo, hi) of a parameter buffer.
 *
 * One element update, `fr_optim_elem`, holds every algorithm behind a switch on `kind`; the range
 * function instantiates the loop once per kind with `kind` a compile-time constant (the switch is
 * hoisted out of the loop by inlining), so each loop body is branch-free straight-line code the
 * compiler vectorizes. The flags that decide whether a state buffer is stored are hoisted the
 * same way; the remaining flags are loop-invariant selects.
 *
 * Buffers (all length n, one dtype):   p = param, g = grad (read only),
 *   SGD      b0 = momentum_buffer
 *   ADAM     b0 = exp_avg, b1 = exp_avg_sq, b2 = max_exp_avg_sq
 *   RMSPROP  b0 = square_avg, b1 = grad_avg, b2 = momentum_buffer
 *   ADAGRAD  b0 = state_sum
 *   ADADELTA b0 = square_avg, b1 = acc_delta
 * Unused buffers may be any pointer (never dereferenced). Coefficients `hp` are precomputed in
 * Python in the parameter dtype (fastreg/_kernels/optim/__init__.py builds them; layout below).
 */
#ifndef FASTREG_OPTIM_STEP_H
#define FASTREG_OPTIM_STEP_H

#include <math.h>
#include <stddef.h>

/* Algorithm codes (mirrored in fastreg/_kernels/optim/__init__.py; a test checks they agree). */
enum { FR_OPT_SGD = 0, FR_OPT_ADAM = 1, FR_OPT_RMSPROP = 2, FR_OPT_ADAGRAD = 3,
       FR_OPT_ADADELTA = 4 };
/* Flag bits. */
enum { FR_OPT_MAXIMIZE = 1, FR_OPT_MOMENTUM = 2, FR_OPT_NESTEROV = 4, FR_OPT_FIRST_STEP = 8,
       FR_OPT_AMSGRAD = 16, FR_OPT_DECOUPLED = 32, FR_OPT_CENTERED = 64 };
/* hp layout: common entries, then per-algorithm entries A..F.
 *   SGD      A = momentum, B = 1 - dampening
 *   ADAM     A = 1 - beta1, B = beta2, C = 1 - beta2, D = eps, E = lr / (1 - beta1^t),
 *            F = 1 / sqrt(1 - beta2^t), G = 1 - lr * weight_decay (decoupled decay);
 *            optim.py passes WD = 0 for AdamW and G = 1 for Adam, so either form is exact
 *   RMSPROP  A = alpha, B = 1 - alpha, C = eps, D = momentum
 *   ADAGRAD  A = lr / (1 + (t - 1) lr_decay), B = eps
 *   ADADELTA A = rho, B = 1 - rho, C = eps                                                    */
enum { FR_HP_LR = 0, FR_HP_WD = 1, FR_HP_L1 = 2, FR_HP_L2X2 = 3, FR_HP_A = 4, FR_HP_B = 5,
       FR_HP_C = 6, FR_HP_D = 7, FR_HP_E = 8, FR_HP_F = 9, FR_HP_G = 10, FR_HP_LEN = 11 };

#if defined(__GNUC__)
#define FR_INLINE static inline __attribute__((always_inline))
#else
#define FR_INLINE static inline
#endif

#define FR_CAT2(a, b) a##b
#define FR_CAT(a, b) FR_CAT2(a, b)

#define REAL float
#define SFX f32
#define FR_SQRT sqrtf
#include "step_impl.h"
#undef REAL
#undef SFX
#undef FR_SQRT

#define REAL double
#define SFX f64
#define FR_SQRT sqrt
#include "step_impl.h"
#undef REAL
#undef SFX
#undef FR_SQRT

#endif
