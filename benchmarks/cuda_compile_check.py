"""Compile every fastreg CUDA kernel to PTX with libNVVM, without a GPU and without the simulator.

numba's CUDA simulator (what the test-suite runs the kernels in) executes the kernels as Python:
it never types them with the CUDA target, so it misses what only real compilation catches
(shared-array shapes that are not compile-time constants, builtins the CUDA target cannot type,
float32 * Python float promoting to float64 on the GPU while NumPy keeps float32, ...). This
script closes that gap on any machine that has the CUDA toolkit's libNVVM (no driver needed)::

    python benchmarks/cuda_compile_check.py              # sm_90
    python benchmarks/cuda_compile_check.py --cc 80,90   # several targets
    python benchmarks/cuda_compile_check.py -v           # also list every signature

How it works, in two processes:

1. record (NUMBA_ENABLE_CUDASIM=1): runs every public CUDA entry point of the five ops
   (fastreg/_kernels/{matmul,norm,dropout,elementwise,optim,embedding}.py with device arrays, float32 and
   float64, with and without the optional arrays) on tiny inputs, recording the numba type of
   every argument of every kernel launch (the types the real CUDA dispatcher would compute).
   The signatures therefore follow the launchers; nothing is listed by hand except the matmul
   128 x 128 tile, which the launcher only picks on a GPU (added for every float32 layout seen).
2. compile (no simulator, get_current_device stubbed to report compute capability 9.0, which
   numba asks the driver for when it compiles device functions): each recorded (kernel,
   signature) is compiled to PTX for every requested target, then (if the toolkit has ptxas)
   assembled with ``ptxas -v`` for its register count and as a second check of the PTX.

Float64 policy: kernels whose design accumulates in float64 (statistics, losses, reductions;
``F64_OK`` below, with the reason from their docs) report their f64 instructions as info. Every
other kernel is meant to compute in its data dtype, so for a signature without float64 arrays
(float32 data, or integers only: the dropout mask/Philox kernels) any f64 instruction, or a
float64 scalar argument, is an error.

Exit status: 0 if everything compiled and no forbidden float64 was found (or when no libNVVM was
found: the run is then "skipped"), 1 otherwise. The libNVVM is looked for in $CUDA_HOME, then
/usr/local/cuda, /usr/local/cuda-*.
"""
from __future__ import annotations

import argparse
import glob
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("matmul", "norm", "dropout", "elementwise", "optim", "embedding")
MODULES = tuple(f"fastreg._kernels.{op}.cuda" for op in OPS)

#: Kernels that accumulate in float64 by design, even for float32 data: their f64 instructions
#: are reported, not failed. Every kernel not listed must stay in its data dtype.
F64_OK = {
    "elementwise": {
        "_finalize_k": "sums float64 block partials",
        "_xent_fwd_k": "softmax row sums and loss in float64",
        "_wxent_fwd_k": "weighted cross-entropy in float64",
        "_wxent_bwd_k": "weighted cross-entropy gradient in float64",
        "_sumsq_k": "float64-accumulated reduction",
        "_sumabs_k": "float64-accumulated reduction",
        "_mse_k": "float64-accumulated reduction",
        "_bce_fwd_k": "BCE loss in float64",
        "_bce_bwd_k": "BCE gradient in float64",
        "_colsum_k": "column sums in float64",
        "_colsum_final_k": "column sums in float64",
    },
    "embedding": {
        "_renorm_kernel": "row p-norms in float64 (as the CPU kernels)",
    },
    "norm": {
        "_bn_train_stats": "batch statistics in float64",
        "_bn_eval": "per-column rstd in float64 (rounded once to the dtype)",
        "_bn_grad_stats": "gradient sums in float64",
        "_bn_eval_backward": "rstd and gradient sums in float64",
        "_ln_forward": "row statistics in float64",
        "_ln_backward_dx": "row sums in float64",
        "_ln_grad_params": "dgamma/dbeta sums in float64",
    },
}

#: Kernels made by a factory and cached in a module-level dict: how to rebuild one from its key
#: in the compile process, and which extra keys the launcher only uses on a real GPU.
def _matmul_build(mod, key):
    return mod._kernel(*key)[0]


def _matmul_variants(mod, key):
    import numpy as np
    dtype, a_k, b_k, _tile = key
    if np.dtype(dtype) == np.float32:       # _pick_tile: the large tile for big float32 outputs
        return [(dtype, a_k, b_k, tuple(mod.TILE_LARGE))]
    return []


FACTORIES = {("fastreg._kernels.matmul.cuda", "_kernels"): (_matmul_build, _matmul_variants)}

#: f64 instructions: arithmetic, comparisons and conversions from/to float64.
_F64_OPS = ("add", "sub", "mul", "fma", "mad", "div", "rcp", "sqrt", "rsqrt", "neg", "abs",
            "min", "max", "setp", "selp", "cvt", "ex2", "lg2", "sin", "cos", "testp", "copysign")
_F64_RE = re.compile(r"^\s*(?:@!?%p\d+\s+)?((?:" + "|".join(_F64_OPS) + r")(?:\.[a-z0-9]+)*)\s",
                     re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# toolkit discovery
# ---------------------------------------------------------------------------------------------

def _find_toolkit():
    """(toolkit root, libnvvm path, libdevice path, ptxas path or None), or None."""
    roots = []
    if os.environ.get("CUDA_HOME"):
        roots.append(os.environ["CUDA_HOME"])
    if os.environ.get("CUDA_PATH"):
        roots.append(os.environ["CUDA_PATH"])
    roots.append("/usr/local/cuda")
    roots += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in roots:
        libs = []
        for sub in ("nvvm/lib64", "nvvm/lib", "lib64", "lib"):
            libs += sorted(glob.glob(os.path.join(root, sub, "libnvvm.so*")))
        bcs = sorted(glob.glob(os.path.join(root, "nvvm", "libdevice", "libdevice*.bc")))
        if libs and bcs:
            ptxas = os.path.join(root, "bin", "ptxas")
            return (os.path.realpath(root), libs[0], bcs[-1],
                    ptxas if os.access(ptxas, os.X_OK) else None)
    return None


# ---------------------------------------------------------------------------------------------
# phase 1: record launch signatures in the simulator
# ---------------------------------------------------------------------------------------------

def _drive():
    """Call every CUDA entry point on tiny device arrays (both float dtypes, optional arrays
    present and absent). Returns a list of (what, error) for calls that raised."""
    import numpy as np

    from fastreg._kernels import dropout as kd
    from fastreg._kernels import elementwise as ke
    from fastreg._kernels import embedding as kemb
    from fastreg._kernels import matmul as km
    from fastreg._kernels import norm as kn
    from fastreg._kernels import optim as ko
    from fastreg._kernels.runtime import cuda as rt

    rng = np.random.default_rng(0)
    errors = []

    def dev(shape, dt, lo=-1.0, hi=1.0):
        return rt.to_device(rng.uniform(lo, hi, shape).astype(dt))

    def emp(shape, dt):
        return rt.empty(shape, dt)

    def run(what, fn, *args, **kw):
        try:
            fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - reported, the check fails
            errors.append((what, f"{type(exc).__name__}: {exc}"))

    for dt in (np.float32, np.float64):
        # matmul: N x K @ (M x K).T
        N, K, M = 3, 5, 4
        x, w, b, dy = dev((N, K), dt), dev((M, K), dt), dev(M, dt), dev((N, M), dt)
        run("linear_forward", km.linear_forward, x, w, b, emp((N, M), dt), "relu")
        run("linear_forward", km.linear_forward, x, w, None, emp((N, M), dt), "sigmoid")
        run("linear_backward_input", km.linear_backward_input, dy, w, emp((N, K), dt))
        run("linear_backward_weight", km.linear_backward_weight, dy, x, emp((M, K), dt),
            emp(M, dt), accumulate=False)
        run("linear_backward_weight", km.linear_backward_weight, dy, x, dev((M, K), dt), None,
            accumulate=True)

        # norm
        N, C = 9, 5
        x, dy, g, be = dev((N, C), dt), dev((N, C), dt), dev(C, dt), dev(C, dt)
        rm, rv = dev(C, dt), dev(C, dt, 0.5, 1.5)
        sm, sr = emp(C, dt), emp(C, dt)
        run("batchnorm_forward_train", kn.batchnorm_forward_train, x, g, be, rm, rv,
            emp((N, C), dt), sm, sr, momentum=0.1, eps=1e-5)
        run("batchnorm_forward_train", kn.batchnorm_forward_train, x, None, None, None, None,
            emp((N, C), dt), sm, sr, momentum=0.1, eps=1e-5)
        run("batchnorm_forward_eval", kn.batchnorm_forward_eval, x, g, be, rm, rv,
            emp((N, C), dt), eps=1e-5)
        run("batchnorm_backward", kn.batchnorm_backward, dy, x, g, sm, sr, emp((N, C), dt),
            emp(C, dt), emp(C, dt), accumulate=False)
        run("batchnorm_backward_eval", kn.batchnorm_backward_eval, dy, x, g, rm, rv,
            emp((N, C), dt), emp(C, dt), emp(C, dt), 1e-5, accumulate=False)
        run("batchnorm_backward_eval", kn.batchnorm_backward_eval, dy, x, None, rm, rv,
            emp((N, C), dt), None, None, 1e-5, accumulate=False)
        lm, lr_ = emp(N, dt), emp(N, dt)
        run("layernorm_forward", kn.layernorm_forward, x, g, be, emp((N, C), dt), lm, lr_,
            eps=1e-5)
        run("layernorm_backward", kn.layernorm_backward, dy, x, g, lm, lr_, emp((N, C), dt),
            emp(C, dt), emp(C, dt), accumulate=False)

        # dropout
        n = 37
        mask = emp(kd.mask_nbytes(n), np.uint8)
        run("dropout_forward", kd.dropout_forward, dev(n, dt), emp(n, dt), mask, 0.25, 4 / 3,
            1234, 5)
        run("dropout_backward", kd.dropout_backward, dev(n, dt), mask, emp(n, dt), 4 / 3)
        run("dropout_mask", kd.dropout_mask, mask, n, 0.25, 1234, 5)
        # ReLU -> Dropout fused pair (Sequential's fusion; trusted entry points)
        rout = emp(n, dt)
        run("relu_dropout_forward", kd.run_relu_dropout_forward, dev(n, dt), rout, mask, 0.25,
            4 / 3, 1234, 5, device=True)
        run("relu_dropout_backward", kd.run_relu_dropout_backward, dev(n, dt), rout, emp(n, dt),
            4 / 3, device=True)
        run("philox4x32_kernel", kd.philox4x32_kernel,
            rt.to_device(np.arange(8, dtype=np.uint32).reshape(2, 4)), (1, 2))

        # embedding: gather, deterministic scatter-add (with padding and frequency scaling),
        # max_norm renormalization
        V, D = 6, 4
        table, idx = dev((V, D), dt), rt.to_device(np.array([[0, 5, 5], [2, 0, 1]], np.int64))
        run("embedding_forward", kemb.embedding_forward, table, idx, emp((2, 3, D), dt))
        run("embedding_backward", kemb.embedding_backward, dev((2, 3, D), dt), idx,
            dev((V, D), dt), padding_idx=1, scale_grad_by_freq=True)
        run("embedding_renorm_", kemb.embedding_renorm_, table, idx, 0.5, 2.0)

        # elementwise: activations, losses, device utilities
        n = 11
        a, yb = dev(n, dt), emp(n, dt)
        run("activation_forward", ke.activation_forward, a, yb, "sigmoid")
        run("activation_backward", ke.activation_backward, dev(n, dt), yb, emp(n, dt),
            "sigmoid")
        N, C = 3, 5
        z, tgt = dev((N, C), dt), rt.to_device(np.array([0, 4, 2], np.int64))
        pr = emp((N, C), dt)
        run("softmax_cross_entropy_forward", ke.softmax_cross_entropy_forward, z, tgt, pr,
            label_smoothing=0.1)
        run("softmax_cross_entropy_backward", ke.softmax_cross_entropy_backward, pr, tgt,
            emp((N, C), dt), label_smoothing=0.1, grad_scale=1 / N)
        cw = dev(C, np.float64, 0.5, 1.5)         # class weights are float64 for both dtypes
        run("softmax_xent_weighted_forward", ke.softmax_xent_weighted_forward, z, tgt, cw, pr,
            0.1)
        run("softmax_xent_weighted_backward", ke.softmax_xent_weighted_backward, pr, tgt, cw,
            emp((N, C), dt), 0.1, 1 / N)
        run("fill", ke.fill, emp(n, dt), 0.5)
        run("scale", ke.scale, a, emp(n, dt), 0.5)
        run("add_", ke.add_, emp(n, dt), a, 0.5)
        run("subtract", ke.subtract, a, dev(n, dt), emp(n, dt))
        run("sum_squares", ke.sum_squares, a)
        run("sum_abs", ke.sum_abs, a)
        run("mse_forward", ke.mse_forward, a, dev(n, dt), emp(n, dt))
        t01 = dev(n, dt, 0.0, 1.0)
        run("bce_with_logits_forward", ke.bce_with_logits_forward, a, t01)
        run("bce_with_logits_forward", ke.bce_with_logits_forward, a, t01, dev(n, dt),
            dev(n, dt))
        run("bce_with_logits_backward", ke.bce_with_logits_backward, a, t01, None, None,
            emp(n, dt), 0.5)
        run("bce_with_logits_backward", ke.bce_with_logits_backward, a, t01, dev(n, dt),
            dev(n, dt), emp(n, dt), 0.5)
        # enough rows for several row chunks (the second, combining kernel)
        rows = 33 * max(1, rt.max_blocks())
        run("column_sum", ke.column_sum, dev((rows, 3), dt), emp(3, dt), accumulate=False)

        # optimizers
        n = 7

        def st(n=n, dt=dt):
            return rt.to_device(np.zeros(n, dt))
        p, gr = dev(n, dt), dev(n, dt)
        run("sgd_step", ko.sgd_step, p, gr, None, lr=0.1)
        run("sgd_step", ko.sgd_step, p, gr, st(), lr=0.1, momentum=0.9, nesterov=True)
        run("adam_step", ko.adam_step, p, gr, st(), st(), None, step=1, weight_decay=0.01)
        run("adam_step", ko.adam_step, p, gr, st(), st(), st(), step=1, amsgrad=True)
        run("rmsprop_step", ko.rmsprop_step, p, gr, st(), st(), st(), momentum=0.9,
            centered=True)
        run("rmsprop_step", ko.rmsprop_step, p, gr, st(), None, None)
        run("adagrad_step", ko.adagrad_step, p, gr, st(), step=1)
        run("adadelta_step", ko.adadelta_step, p, gr, st(), st())
    return errors


def _arg_type(a):
    """The numba type the real CUDA dispatcher would give a launch argument."""
    import numpy as np
    from numba import typeof, types
    from numba.core.typing.typeof import Purpose
    from numba.np.numpy_support import from_dtype

    host = getattr(a, "_ary", None)          # the simulator's FakeCUDAArray wraps a numpy array
    if host is None and isinstance(a, np.ndarray):
        host = a
    if host is not None:
        f = host.flags
        layout = "C" if f.c_contiguous else ("F" if f.f_contiguous else "A")
        return types.Array(from_dtype(host.dtype), host.ndim, layout)
    return typeof(a, Purpose.argument)


def _record(path: str) -> int:
    sys.path.insert(0, ROOT)
    import importlib

    from numba.core import config
    if not config.ENABLE_CUDASIM:
        print("record phase needs NUMBA_ENABLE_CUDASIM=1", file=sys.stderr)
        return 2
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    launches = []
    orig_call = FakeCUDAKernel.__call__

    def call(self, *args):
        if not self._device:
            launches.append((self, tuple(_arg_type(a) for a in args)))
        return orig_call(self, *args)

    FakeCUDAKernel.__call__ = call
    errors = _drive()
    FakeCUDAKernel.__call__ = orig_call

    mods = {name: importlib.import_module(name) for name in MODULES}

    def describe(kern):
        for mname, mod in mods.items():
            for attr, obj in vars(mod).items():
                if obj is kern:
                    return ("attr", mname, attr)
            for attr, obj in vars(mod).items():
                if isinstance(obj, dict):
                    for key, val in obj.items():
                        if val is kern or (isinstance(val, tuple) and any(v is kern for v in val)):
                            return ("factory", mname, attr, key)
        return ("unknown", getattr(kern.fn, "__module__", "?"), kern.fn.__qualname__)

    sigs: dict = {}
    for kern, argtypes in launches:
        d = describe(kern)
        sigs.setdefault(d, set()).add(argtypes)
    # factory variants the launcher only picks on a GPU
    for d in list(sigs):
        if d[0] == "factory" and (d[1], d[2]) in FACTORIES:
            _, variants = FACTORIES[(d[1], d[2])]
            for key in variants(mods[d[1]], d[3]):
                sigs.setdefault(("factory", d[1], d[2], key), set()).update(sigs[d])
    with open(path, "wb") as fh:
        pickle.dump({"sigs": {d: sorted(s, key=str) for d, s in sigs.items()},
                     "errors": errors}, fh)
    return 0


# ---------------------------------------------------------------------------------------------
# phase 2: compile for real
# ---------------------------------------------------------------------------------------------

def _label(d) -> str:
    op = d[1].split(".")[-2]   # fastreg._kernels.<op>.cuda
    if d[0] == "factory":
        import numpy as np
        key = d[3]
        if op == "matmul":
            dt, a_k, b_k, tile = key
            lay = {True: "k", False: "mn"}
            return (f"{op}:gemm[{np.dtype(dt).name} A:{lay[a_k]} B:{lay[b_k]} "
                    f"{tile[0]}x{tile[1]}]")
        return f"{op}:{d[2]}[{key}]"
    return f"{op}:{d[2]}"


def _stub_device(cc):
    """numba compiles device functions for the current device's compute capability: report cc
    instead of asking the (absent) driver."""
    import numba.cuda.compiler as comp
    import numba.cuda.dispatcher as disp

    class _Dev:
        compute_capability = cc
        name = "compile-check stub"

    for mod in (disp, comp):
        if hasattr(mod, "get_current_device"):
            mod.get_current_device = lambda: _Dev()

    # name the device function (or builtin overload) whose compilation failed: numba's own
    # message is often only "Signature mismatch: ..." without saying where
    orig = disp.CUDADispatcher.compile_device

    def compile_device(self, args, *rest, **kw):
        try:
            return orig(self, args, *rest, **kw)
        except Exception as exc:
            if not hasattr(exc, "_fastreg_where"):
                f = self.py_func
                where = f"{f.__module__}.{f.__qualname__}{tuple(str(a) for a in args)}"
                if f.__module__ == "numba.cpython.builtins":
                    where += (" -- a builtin min()/max() call: numba 0.68's CUDA target cannot "
                              "compile its varargs overload; use a conditional expression")
                exc._fastreg_where = where
            raise

    disp.CUDADispatcher.compile_device = compile_device


def _use_toolkit(nvvm_lib, libdevice):
    """Make numba use the libNVVM / libdevice found here even if its own search misses them."""
    from numba.cuda import cuda_paths
    paths = cuda_paths.get_cuda_paths()
    tup = type(paths["nvvm"])
    if not paths["nvvm"].info:
        paths["nvvm"] = tup("fastreg compile check", nvvm_lib)
    if not paths["libdevice"].info:
        paths["libdevice"] = tup("fastreg compile check", libdevice)


def _ptx_for(pyfunc, argtypes, ccs):
    """PTX of the kernel pyfunc(argtypes) for each cc: one typing/lowering, one NVVM run per cc
    (numba.cuda.compile_ptx does the same steps for a single cc)."""
    from numba.core import types
    from numba.cuda.compiler import compile_cuda
    nvvm_options = {"fastmath": False, "opt": 3}
    cres = compile_cuda(pyfunc, types.void, argtypes, debug=False, lineinfo=False,
                        fastmath=False, nvvm_options=nvvm_options, cc=max(ccs))
    if cres.signature.return_type not in (None, types.void):
        raise TypeError("CUDA kernel must have void return type.")
    code = pyfunc.__code__
    lib, _kernel = cres.target_context.prepare_cuda_kernel(
        cres.library, cres.fndesc, False, False, nvvm_options, code.co_filename,
        code.co_firstlineno)
    return {cc: lib.get_asm_str(cc=cc) for cc in ccs}


def _f64_counts(ptx: str) -> dict:
    out: dict = {}
    for m in _F64_RE.finditer(ptx):
        op = m.group(1)
        if ".f64" in op:
            base = op.split(".")[0]
            out[base] = out.get(base, 0) + 1
    return out


def _ptxas(ptxas, ptx, cc):
    """(registers, error or None) from ptxas -v."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        p = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", src, "-o",
                            os.path.join(tmp, "k.cubin")], capture_output=True, text=True,
                           check=False)
    if p.returncode != 0:
        return None, " ".join((p.stderr or p.stdout).split())[:300]
    regs = re.findall(r"Used (\d+) registers", p.stderr + p.stdout)
    return (max(map(int, regs)) if regs else None), None


def _sig_kind(argtypes) -> str:
    """"f32" if any array argument is float32 (float32 data; float64 arrays beside it are
    accumulators or stand-ins), else "f64" if any is float64, else "int"."""
    from numba.core import types
    dts = {t.dtype for t in argtypes if isinstance(t, types.Array)}
    return "f32" if types.float32 in dts else ("f64" if types.float64 in dts else "int")


def _compile_all(rec_path, ccs, ptxas, verbose) -> int:
    sys.path.insert(0, ROOT)
    import importlib

    from numba.core import config, types
    if config.ENABLE_CUDASIM:
        print("compile phase must run without NUMBA_ENABLE_CUDASIM", file=sys.stderr)
        return 2
    _stub_device(max(ccs))
    _use_toolkit(os.environ["FASTREG_NVVM_LIB"], os.environ["FASTREG_LIBDEVICE"])
    from numba.cuda.dispatcher import CUDADispatcher

    with open(rec_path, "rb") as fh:
        rec = pickle.load(fh)
    sigs = rec["sigs"]
    mods = {name: importlib.import_module(name) for name in MODULES}
    failures = []
    for what, err in rec["errors"]:
        failures.append(f"driver: {what} raised in the simulator: {err}")

    # every kernel of the modules must have been launched by the driver
    seen = {(d[1], d[2]) for d in sigs if d[0] == "attr"}
    for mname, mod in mods.items():
        for attr, obj in vars(mod).items():
            if (isinstance(obj, CUDADispatcher) and not obj.targetoptions.get("device")
                    and (mname, attr) not in seen):
                failures.append(f"{_label(('attr', mname, attr))}: never launched by the "
                                "driver (add a call to _drive in this script)")
    for d in sigs:
        if d[0] == "unknown":
            failures.append(f"kernel {d[2]} of {d[1]}: launched but not found in the modules")

    rows = []
    t0 = time.perf_counter()
    for d in sorted((d for d in sigs if d[0] != "unknown"), key=_label):
        label = _label(d)
        if d[0] == "attr":
            pyfunc = getattr(mods[d[1]], d[2]).py_func
            kname = d[2]
        else:
            build = FACTORIES.get((d[1], d[2]))
            if build is None:
                failures.append(f"{label}: no rebuild rule in FACTORIES")
                continue
            pyfunc = build[0](mods[d[1]], d[3]).py_func
            kname = d[2]
        op = d[1].split(".")[-2]   # fastreg._kernels.<op>.cuda
        f64_reason = F64_OK.get(op, {}).get(kname)
        for argtypes in sigs[d]:
            sig_s = ", ".join(str(t) for t in argtypes)
            kind = _sig_kind(argtypes)
            row = {"kernel": label, "sig": kind, "status": "ok", "regs": {}, "notes": [],
                   "sig_s": sig_s}
            try:
                ptxs = _ptx_for(pyfunc, argtypes, ccs)
            except Exception as exc:  # noqa: BLE001
                msg = " ".join(str(exc).split())
                msg = msg if len(msg) <= 400 else msg[:397] + "..."
                if getattr(exc, "_fastreg_where", None):
                    msg += f" [while compiling device function {exc._fastreg_where}]"
                row["status"] = "ERROR"
                row["notes"].append(f"{type(exc).__name__}: {msg}")
                failures.append(f"{label} ({kind}: {sig_s}): {type(exc).__name__}: {msg}")
                rows.append(row)
                continue
            for cc, ptx in ptxs.items():
                if ptxas:
                    regs, err = _ptxas(ptxas, ptx, cc)
                    row["regs"][cc] = regs
                    if err:
                        row["status"] = "ERROR"
                        row["notes"].append(f"ptxas sm_{cc[0]}{cc[1]}: {err}")
                        failures.append(f"{label} ({kind}): ptxas sm_{cc[0]}{cc[1]}: {err}")
            f64 = _f64_counts(ptxs[max(ccs)])
            f64_s = " ".join(f"{k}:{v}" for k, v in sorted(f64.items()))
            if kind != "f64" and f64_reason:
                if f64:
                    row["notes"].append(f"info: f64 {f64_s} ({f64_reason})")
            elif kind != "f64":
                # a kernel meant to compute in its data dtype (or integers only)
                n_scalars = sum(t == types.float64 for t in argtypes)
                arith = {k: v for k, v in f64.items() if k != "cvt"}
                what = []
                if arith:
                    what.append(f"f64 instructions {f64_s}")
                if n_scalars:
                    what.append(f"{n_scalars} float64 scalar argument(s)")
                if what:
                    row["status"] = "F64"
                    row["notes"].append("; ".join(what))
                    failures.append(f"{label} ({kind}: {sig_s}): {'; '.join(what)}, in a "
                                    "kernel meant to compute in its data dtype")
                elif f64:
                    # conversions only (e.g. a float64 literal in a select, converted back):
                    # exact, and cheap, but not meant to be there
                    row["status"] = "warn"
                    row["notes"].append(f"f64 conversions only ({f64_s}): a float64 value "
                                        "(literal?) is widened/narrowed")
            rows.append(row)
    elapsed = time.perf_counter() - t0
    _print_table(rows, ccs, verbose)
    n_err = sum(r["status"] == "ERROR" for r in rows)
    n_f64 = sum(r["status"] == "F64" for r in rows)
    n_warn = sum(r["status"] == "warn" for r in rows)
    print(f"\n{len(rows)} kernel signatures ({len({r['kernel'] for r in rows})} kernels) "
          f"compiled for {', '.join(f'sm_{a}{b}' for a, b in ccs)} in {elapsed:.1f} s: "
          f"{len(rows) - n_err - n_f64 - n_warn} ok, {n_warn} warnings, {n_err} errors, "
          f"{n_f64} forbidden float64"
          + ("" if ptxas else " (no ptxas: no register counts)"))
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("cuda_compile_check: OK")
    return 0


def _print_table(rows, ccs, verbose):
    head = ["kernel", "sig", "status"] + [f"regs sm_{a}{b}" for a, b in ccs] + ["notes"]
    lines = [head]
    for r in rows:
        lines.append([r["kernel"], r["sig"], r["status"]]
                     + [("-" if r["regs"].get(cc) is None else str(r["regs"][cc]))
                        for cc in ccs]
                     + ["; ".join(r["notes"])])
        if verbose:
            lines.append(["", "", "", *([""] * len(ccs)), "(" + r["sig_s"] + ")"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1])


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cc", default="90",
                    help="comma-separated compute capabilities, e.g. 80,90 (default 90)")
    ap.add_argument("--no-ptxas", action="store_true", help="skip ptxas (no register counts)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every signature")
    ap.add_argument("--record", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--compile", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    ccs = sorted({(int(c) // 10, int(c) % 10) for c in args.cc.split(",") if c.strip()})

    if args.record:
        return _record(args.record)
    if args.compile:
        ptxas = None if args.no_ptxas else os.environ.get("FASTREG_PTXAS") or None
        return _compile_all(args.compile, ccs, ptxas, args.verbose)

    tk = _find_toolkit()
    if tk is None:
        print("cuda_compile_check: skipped: no libNVVM found (looked in $CUDA_HOME, "
              "/usr/local/cuda, /usr/local/cuda-*: need lib*/libnvvm.so* or nvvm/lib64 and "
              "nvvm/libdevice/libdevice*.bc). Install the CUDA toolkit or set CUDA_HOME.")
        return 0
    root, nvvm_lib, libdevice, ptxas = tk
    print(f"cuda_compile_check: toolkit {root} (libNVVM {os.path.basename(nvvm_lib)}"
          f"{', ptxas' if ptxas else ', no ptxas'})")
    me = os.path.abspath(__file__)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rec = os.path.join(tmp, "signatures.pkl")
        sim_env = dict(env, NUMBA_ENABLE_CUDASIM="1")
        p = subprocess.run([sys.executable, me, "--record", rec], env=sim_env, check=False)
        if p.returncode != 0:
            print(f"cuda_compile_check: recording the launch signatures failed "
                  f"(exit {p.returncode})")
            return 1
        t1 = time.perf_counter()
        print(f"recorded launch signatures in the simulator in {t1 - t0:.1f} s")
        cenv = {k: v for k, v in env.items() if k != "NUMBA_ENABLE_CUDASIM"}
        cenv.update(CUDA_HOME=root, FASTREG_NVVM_LIB=nvvm_lib, FASTREG_LIBDEVICE=libdevice,
                    FASTREG_PTXAS=ptxas or "")
        cmd = [sys.executable, me, "--compile", rec, "--cc", args.cc]
        if args.no_ptxas:
            cmd.append("--no-ptxas")
        if args.verbose:
            cmd.append("-v")
        p = subprocess.run(cmd, env=cenv, check=False)
        if p.returncode not in (0, 1):
            print(f"cuda_compile_check: the compile phase crashed (exit {p.returncode})")
            return 1
    print(f"total {time.perf_counter() - t0:.1f} s")
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
