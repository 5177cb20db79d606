/* Body of step.h, included once per REAL (float, double) with suffix SFX. */

typedef struct {
    REAL lr, wd, l1, l2x2, a, b, c, d, e, f, g;
} FR_CAT(fr_optim_coef_, SFX);

/* One element of every algorithm; `kind` and the store-deciding flag bits are compile-time
 * constants at each call site below, so only one case survives per loop. */
FR_INLINE void FR_CAT(fr_optim_elem_, SFX)(
    const int kind, const int flags, const FR_CAT(fr_optim_coef_, SFX) c,
    REAL *restrict p, const REAL *restrict gr, REAL *restrict b0, REAL *restrict b1,
    REAL *restrict b2, const ptrdiff_t i)
{
    const REAL zero = (REAL)0;
    REAL w = p[i];
    /* The L1/L2 penalties are part of the loss: their gradient joins the loss gradient first. */
    REAL g = gr[i] + (w > zero ? c.l1 : (w < zero ? -c.l1 : zero)) + c.l2x2 * w;
    if (flags & FR_OPT_MAXIMIZE) g = -g;
    switch (kind) {
    case FR_OPT_SGD: {
        g += c.wd * w;
        if (flags & FR_OPT_MOMENTUM) {
            /* torch: the first step copies g into the buffer, without dampening. */
            REAL buf = (flags & FR_OPT_FIRST_STEP) ? g : c.a * b0[i] + c.b * g;
            b0[i] = buf;
            g = (flags & FR_OPT_NESTEROV) ? g + c.a * buf : buf;
        }
        p[i] = w - c.lr * g;
        break;
    }
    case FR_OPT_ADAM: {
        if (flags & FR_OPT_DECOUPLED) w *= c.g; else g += c.wd * w;
        REAL m = b0[i];
        m = m + c.a * (g - m);                  /* exp_avg.lerp_(g, 1 - beta1) */
        REAL v = c.b * b1[i] + c.c * (g * g);   /* exp_avg_sq * beta2 + (1 - beta2) g^2 */
        b0[i] = m;
        b1[i] = v;
        if (flags & FR_OPT_AMSGRAD) {
            REAL vm = b2[i];
            vm = vm > v ? vm : v;
            b2[i] = vm;
            v = vm;
        }
        p[i] = w - c.e * (m / (FR_SQRT(v) * c.f + c.d));
        break;
    }
    case FR_OPT_RMSPROP: {
        g += c.wd * w;
        REAL sq = c.a * b0[i] + c.b * (g * g);
        b0[i] = sq;
        REAL avg;
        if (flags & FR_OPT_CENTERED) {
            REAL ga = b1[i];
            ga = ga + c.b * (g - ga);
            b1[i] = ga;
            avg = FR_SQRT(sq - ga * ga) + c.c;
        } else {
            avg = FR_SQRT(sq) + c.c;
        }
        if (flags & FR_OPT_MOMENTUM) {
            REAL buf = c.d * b2[i] + g / avg;
            b2[i] = buf;
            p[i] = w - c.lr * buf;
        } else {
            p[i] = w - c.lr * (g / avg);
        }
        break;
    }
    case FR_OPT_ADAGRAD: {
        g += c.wd * w;
        REAL s = b0[i] + g * g;
        b0[i] = s;
        p[i] = w - c.a * (g / (FR_SQRT(s) + c.b));
        break;
    }
    default: { /* FR_OPT_ADADELTA */
        g += c.wd * w;
        REAL sq = c.a * b0[i] + c.b * (g * g);
        b0[i] = sq;
        REAL acc = b1[i];
        REAL delta = FR_SQRT(acc + c.c) / FR_SQRT(sq + c.c) * g;
        b1[i] = c.a * acc + c.b * (delta * delta);
        p[i] = w - c.lr * delta;
        break;
    }
    }
}

#define FR_LOOP(K, F)                                                                    \
    for (ptrdiff_t i = lo; i < hi; ++i)                                                  \
        FR_CAT(fr_optim_elem_, SFX)((K), (F), c, p, g, b0, b1, b2, i)

/* Update elements [lo, hi). One loop per (kind, store flags): the switch is outside. */
static void FR_CAT(fr_optim_range_, SFX)(
    int kind, int flags, REAL *restrict p, const REAL *restrict g, REAL *restrict b0,
    REAL *restrict b1, REAL *restrict b2, const REAL *restrict hp, ptrdiff_t lo, ptrdiff_t hi)
{
    const FR_CAT(fr_optim_coef_, SFX) c = {
        hp[FR_HP_LR], hp[FR_HP_WD], hp[FR_HP_L1], hp[FR_HP_L2X2], hp[FR_HP_A], hp[FR_HP_B],
        hp[FR_HP_C], hp[FR_HP_D], hp[FR_HP_E], hp[FR_HP_F], hp[FR_HP_G]};
    const int mx = flags & FR_OPT_MAXIMIZE;
    switch (kind) {
    case FR_OPT_SGD:
        if (!(flags & FR_OPT_MOMENTUM)) FR_LOOP(FR_OPT_SGD, mx);
        else if (flags & FR_OPT_FIRST_STEP)
            FR_LOOP(FR_OPT_SGD, mx | FR_OPT_MOMENTUM | FR_OPT_FIRST_STEP |
                    (flags & FR_OPT_NESTEROV));
        else FR_LOOP(FR_OPT_SGD, mx | FR_OPT_MOMENTUM | (flags & FR_OPT_NESTEROV));
        break;
    case FR_OPT_ADAM:
        if (flags & FR_OPT_AMSGRAD)
            FR_LOOP(FR_OPT_ADAM, mx | FR_OPT_AMSGRAD | (flags & FR_OPT_DECOUPLED));
        else FR_LOOP(FR_OPT_ADAM, mx | (flags & FR_OPT_DECOUPLED));
        break;
    case FR_OPT_RMSPROP:
        switch (flags & (FR_OPT_CENTERED | FR_OPT_MOMENTUM)) {
        case 0: FR_LOOP(FR_OPT_RMSPROP, mx); break;
        case FR_OPT_CENTERED: FR_LOOP(FR_OPT_RMSPROP, mx | FR_OPT_CENTERED); break;
        case FR_OPT_MOMENTUM: FR_LOOP(FR_OPT_RMSPROP, mx | FR_OPT_MOMENTUM); break;
        default: FR_LOOP(FR_OPT_RMSPROP, mx | FR_OPT_CENTERED | FR_OPT_MOMENTUM); break;
        }
        break;
    case FR_OPT_ADAGRAD: FR_LOOP(FR_OPT_ADAGRAD, mx); break;
    default: FR_LOOP(FR_OPT_ADADELTA, mx); break;
    }
}

#undef FR_LOOP
