# Thread control for the OpenMP runtime the Cython kernels use.
cdef extern from "prelude.h":
    int FASTREG_HAVE_OPENMP
    void omp_set_num_threads(int n) nogil
    int omp_get_max_threads() nogil

HAVE_OPENMP = bool(FASTREG_HAVE_OPENMP)


def set_num_threads(int n):
    omp_set_num_threads(n)


def get_max_threads():
    return omp_get_max_threads()
