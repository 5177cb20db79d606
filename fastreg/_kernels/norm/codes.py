"""Constants of the norm kernels' work split (read by the public layer, passed to backends)."""

#: Below this many elements one thread does the whole call: waking the pool costs more than
#: the work (about 10 us of memory traffic).
SERIAL_BELOW = 16384
#: Row chunks per thread for parallel calls. The Cython backend hands chunks out dynamically, so
#: on a machine where another process holds part of a core the other threads take more of them
#: (with one chunk per thread, every pass waited for the slowest thread). Each chunk keeps its
#: own column partials, added in chunk order, so results do not depend on the schedule.
CHUNKS_PER_THREAD = 4
