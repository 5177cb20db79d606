/* OpenMP when the build has it, serial stand-ins otherwise (setup.py decides). */
#ifndef FASTREG_OMP_COMPAT_H
#define FASTREG_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
#define FASTREG_HAVE_OPENMP 1
#else
#define FASTREG_HAVE_OPENMP 0
static inline void omp_set_num_threads(int n) { (void)n; }
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
#endif
#endif
