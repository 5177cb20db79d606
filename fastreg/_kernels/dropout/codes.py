"""Constants of the dropout RNG (Philox4x32-10, Random123's constants; the specification is in
this package's ``__init__``). The C kernels read the same numbers from ``common/philox.h``."""

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
#: Multipliers of the two Philox S-boxes.
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
#: Weyl increments of the key between rounds.
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
