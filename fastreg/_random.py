"""fastreg's random state: a seeded NumPy generator (init, shuffling, augmentation) and a Philox
key + counter (dropout masks, reproducible on every backend and thread count)."""
from __future__ import annotations

import numpy as np

#: Seed of the default generator before any manual_seed call (deterministic, like torch's).
DEFAULT_SEED = 67280421310721
_MASK64 = (1 << 64) - 1
#: Bits of the Philox block counter below a process's stream number: each MPI rank draws its
#: dropout masks from blocks ``rank * 2**44 + offset`` (2**44 blocks = 2**51 mask bits per rank).
PHILOX_STREAM_SHIFT = 44
_stream = 0


def set_philox_stream(stream: int) -> None:
    """Offset every dropout counter of this process by ``stream * 2**44`` blocks.

    ``fastreg.distributed.init`` sets it to the rank, so the ranks of one job draw different,
    reproducible masks from one seed while the saved random state (seed, offset) stays the same
    on every rank. Stream 0 (the default) is the single-process sequence.
    """
    global _stream
    if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) \
            or not 0 <= stream < (1 << (64 - PHILOX_STREAM_SHIFT)):
        raise ValueError(f"stream must be an integer in [0, 2**{64 - PHILOX_STREAM_SHIFT}), "
                         f"got {stream!r}")
    _stream = int(stream)


def philox_stream() -> int:
    return _stream


class Generator:
    """Random state. ``manual_seed(s)`` resets both streams.

    Attributes
    ----------
    numpy : numpy.random.Generator
        Used by initializers, data shuffling and augmentation.
    seed : int
        The 64-bit Philox key used for dropout masks.
    philox_offset : int
        Next unused Philox counter block; every dropout call reserves the blocks it uses.
    """

    def __init__(self, seed: int | None = None):
        self.manual_seed(DEFAULT_SEED if seed is None else seed)

    def manual_seed(self, seed: int) -> Generator:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed) & _MASK64
        self.numpy = np.random.default_rng(self.seed)
        self.philox_offset = 0
        return self

    def initial_seed(self) -> int:
        return self.seed

    def reserve_philox(self, n_blocks: int) -> tuple[int, int]:
        """Return (seed, offset) for a call that uses ``n_blocks`` counter blocks, and advance.

        The returned offset includes this process's stream (:func:`set_philox_stream`);
        ``philox_offset`` itself counts the blocks used, the same on every rank."""
        offset = self.philox_offset
        self.philox_offset = (offset + int(n_blocks)) & _MASK64
        return self.seed, (offset + (_stream << PHILOX_STREAM_SHIFT)) & _MASK64

    def get_state(self) -> dict:
        return {"seed": self.seed, "philox_offset": self.philox_offset,
                "numpy": self.numpy.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.seed = int(state["seed"]) & _MASK64
        self.philox_offset = int(state["philox_offset"]) & _MASK64
        self.numpy = np.random.default_rng(self.seed)
        self.numpy.bit_generator.state = state["numpy"]


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed fastreg's default generator (initialization, shuffling, dropout), as torch.manual_seed."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    return default_generator.initial_seed()
