"""fastreg's random state: a seeded NumPy generator (init, shuffling, augmentation) and a Philox
key + counter (dropout masks, reproducible on every backend and thread count)."""
from __future__ import annotations

import numpy as np

#: Seed of the default generator before any manual_seed call (deterministic, like torch's).
DEFAULT_SEED = 67280421310721
_MASK64 = (1 << 64) - 1


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
        """Return (seed, offset) for a call that uses ``n_blocks`` counter blocks, and advance."""
        offset = self.philox_offset
        self.philox_offset = (offset + int(n_blocks)) & _MASK64
        return self.seed, offset

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
