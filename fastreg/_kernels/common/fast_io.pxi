# The exact-input check of the compiled chains' C fast paths (matmul's LinearChain and quant's
# Q8Chain `fast` methods), included by both cy.pyx files (needs `cimport numpy as cnp`).

cdef inline cnp.ndarray _fast_io(object x, object out, int type_num, cnp.npy_intp in_features,
                                 cnp.npy_intp out_features, cnp.npy_intp *n_rows):
    """The output array for ``x`` (fresh, or ``out``) with ``n_rows[0]`` set, or None if ``x``
    (or ``out``) is not exactly what a chain's kernels take: a C-contiguous, aligned,
    native-order ndarray of ``type_num``, shape (N, in_features) with 1 <= N < 2**31 or
    (in_features,); ``out`` None or such an array of the output's shape that does not overlap
    ``x`` (the caller's slow path then coerces, copies or raises)."""
    if type(x) is not cnp.ndarray:
        return None
    cdef cnp.ndarray a = <cnp.ndarray>x
    cdef cnp.ndarray o
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *shape = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp oshape[2]
    cdef cnp.npy_intp n
    cdef char *lo
    cdef char *hi
    if (cnp.PyArray_TYPE(a) != type_num or not cnp.PyArray_ISCARRAY_RO(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return None
    if nd == 2 and shape[1] == in_features and shape[0] > 0:
        n = shape[0]
        oshape[0] = n
        oshape[1] = out_features
    elif nd == 1 and shape[0] == in_features:
        n = 1
        oshape[0] = out_features
    else:
        return None
    if n > 2147483647:
        return None
    if out is None:
        o = cnp.PyArray_EMPTY(nd, oshape, type_num, 0)
    else:
        if type(out) is not cnp.ndarray:
            return None
        o = <cnp.ndarray>out
        if (cnp.PyArray_TYPE(o) != type_num or cnp.PyArray_NDIM(o) != nd
                or not cnp.PyArray_ISCARRAY(o) or not cnp.PyArray_ISNOTSWAPPED(o)
                or cnp.PyArray_DIMS(o)[0] != oshape[0]
                or (nd == 2 and cnp.PyArray_DIMS(o)[1] != oshape[1])):
            return None
        lo = <char*>cnp.PyArray_DATA(a)
        hi = <char*>cnp.PyArray_DATA(o)
        if (hi < lo + cnp.PyArray_NBYTES(a)) and (lo < hi + cnp.PyArray_NBYTES(o)):
            return None     # overlapping: the slow path works through a copy
    n_rows[0] = n
    return o
