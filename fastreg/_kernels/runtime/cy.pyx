# Thread control for the OpenMP runtime the Cython kernels use, and the callback that runs
# OpenBLAS's threads on that runtime's pool (blas_pool.h; fastreg/_kernels/runtime/__init__.py).
cdef extern from "prelude.h":
    int FASTREG_HAVE_OPENMP
    void omp_set_num_threads(int n) nogil
    int omp_get_max_threads() nogil

cdef extern from "blas_pool.h":
    size_t fastreg_blas_threads_address()
    long fastreg_blas_omp_calls
    long fastreg_blas_thread_calls

HAVE_OPENMP = bool(FASTREG_HAVE_OPENMP)


def set_num_threads(int n):
    omp_set_num_threads(n)


def get_max_threads():
    return omp_get_max_threads()


def blas_callback_address():
    """Address of the C function OpenBLAS's threads callback points at (blas_pool.h)."""
    return fastreg_blas_threads_address()


def blas_callback_calls():
    """(calls run on an OpenMP team, calls run on fallback pthreads) since the module loaded."""
    return fastreg_blas_omp_calls, fastreg_blas_thread_calls
