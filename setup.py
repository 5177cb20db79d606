"""Build the Cython kernels (fastreg/_kernels/<family>/cy.pyx), with OpenMP where the compiler has it.

Environment knobs:
  FASTREG_PORTABLE=1   do not pass -march=native (build for any x86-64 / aarch64 machine)
  FASTREG_NO_OPENMP=1  build without OpenMP even if the compiler supports it
  FASTREG_ONLY=name    (development) build only the extensions whose file name contains `name`
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiler_accepts(flags: list[str], source: str) -> bool:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        try:
            res = subprocess.run([cc, *flags, src, "-o", os.path.join(tmp, "probe")],
                                 check=False, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return res.returncode == 0


OMP_PROBE = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
use_openmp = os.environ.get("FASTREG_NO_OPENMP") != "1" and sys.platform != "win32" and \
    _compiler_accepts(["-fopenmp"], OMP_PROBE)
use_native = os.environ.get("FASTREG_PORTABLE") != "1" and \
    _compiler_accepts(["-march=native"], "int main(void){return 0;}\n")

compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
link_args = []
if use_native:
    compile_args.append("-march=native")
if use_openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
print(f"fastreg build: openmp={use_openmp} march_native={use_native}", file=sys.stderr)

# Per-family flags. elementwise: its exp/tanh/sigmoid/softmax loops (ops.h) end in selects
# (clamps, the NaN pass-through); with gcc's default -ftrapping-math a floating-point compare
# may trap, so gcc does not if-convert them and the loops stay scalar (4-8 ns an element).
# -fno-trapping-math only drops that assumption (nothing here reads the FP exception flags or
# enables traps); it permits no value-changing transformation, so results are unchanged.
# optim: AMSGrad's running max is such a select (its loop ran scalar, 10x Adam's time).
# matmul: the fused Sigmoid / Tanh epilogues call ops.h's exp / tanh (kernel.h).
FAMILY_ARGS = {"elementwise": ["-fno-trapping-math"], "optim": ["-fno-trapping-math"],
               "matmul": ["-fno-trapping-math"]}

extensions = []
only = os.environ.get("FASTREG_ONLY", "")
for pyx in sorted(glob.glob(os.path.join("fastreg", "_kernels", "*", "cy.pyx"))):
    family = os.path.basename(os.path.dirname(pyx))
    if only and only not in family:
        continue
    name = pyx[:-4].replace(os.sep, ".")
    # family headers are found next to the generated .c file; shared ones in common/
    extensions.append(Extension(
        name, [pyx], include_dirs=[np.get_include(), os.path.join("fastreg", "_kernels", "common")],
        extra_compile_args=compile_args + FAMILY_ARGS.get(family, []), extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ))

setup(ext_modules=cythonize(
    extensions, language_level=3,
    compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                         "initializedcheck": False, "nonecheck": False},
))
