"""Constants of the norm kernels' work split (read by the public layer, passed to backends)."""

#: Below this many elements one thread does the whole call: waking the pool costs more than
#: the work (about 10 us of memory traffic).
SERIAL_BELOW = 16384
#: Row chunks per thread the old split aimed at (kept for callers that read it). The split is now
#: a function of the shape only (norm._n_chunks: one chunk per SERIAL_BELOW elements, at most
#: MAX_CHUNKS): each chunk keeps its own column partials, added in chunk order, so results depend
#: neither on the schedule nor on the thread count. The Cython backend hands chunks out
#: dynamically, so on a machine where another process holds part of a core the other threads
#: take more of them.
CHUNKS_PER_THREAD = 4
#: At most this many row chunks: 4 per thread up to 16 threads (the (P, 2, C) float64 partials
#: every thread combines stay in L2: 1 MB at C = 1024).
MAX_CHUNKS = 64
