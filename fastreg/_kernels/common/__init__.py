"""Pieces every op family shares: the activation codes (``codes.py``), the C prelude
(``prelude.h``: OpenMP or its serial stand-in) and the Philox4x32-10 rounds (``philox.h``)."""
