"""Embedding: a lookup table of learnable rows indexed by integers, as ``torch.nn.Embedding``.

Shapes: V = num_embeddings, D = embedding_dim; the input is an int32/int64 index array of any
shape S, the output (*S, D). The gather, the scatter-add of the gradient and the max_norm
renormalization run in :mod:`fastreg._kernels.embedding` (Numba and Cython kernels).
"""
from __future__ import annotations

import numpy as np

from .. import _config
from .._checks import check_flag, check_scalar
from .._kernels import embedding as _embedding
from .._kernels import placement
from .._kernels.placement import HOST
from ._spec import (
    MAX_DIM,
    Arg,
    ForwardOp,
    LayerSpec,
    is_bool,
    is_dim,
    is_dtype,
    is_real_or_none,
    register_layer,
)
from .module import Module
from .parameter import Parameter

__all__ = ["Embedding"]

#: Largest index float32 represents exactly (compile's float input, see EmbeddingLookup).
_F32_EXACT = 2**24


def _is_index_or_none(v) -> bool:
    return v is None or (type(v) is int and 0 <= v < MAX_DIM)


def _is_norm_type(v) -> bool:
    return type(v) in (int, float) and v > 0        # inf allowed, NaN fails the comparison


def _embedding_state(a) -> dict:
    return {"weight": ((a["num_embeddings"], a["embedding_dim"]), a["dtype"])}


def _resolve_dtype(dtype) -> np.dtype:
    if dtype is None:
        return _config.get_default_dtype()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _config.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


@register_layer
class Embedding(Module):
    r"""A table of V learnable rows of size D, looked up by integer index, as
    ``torch.nn.Embedding``.

    .. math::
        y_{s,:} = W_{x_s,:}, \qquad
        \frac{\partial L}{\partial W_k} \mathrel{+}= s_k \sum_{s:\,x_s = k}
            \frac{\partial L}{\partial y_{s,:}} \quad (k \ne \text{padding\_idx})

    with :math:`s_k = 1/\#\{s: x_s = k\}` under ``scale_grad_by_freq``, else 1.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        V and D; ``weight`` is (V, D), initialized :math:`\mathcal N(0, 1)` as torch.
    padding_idx : int, optional
        A row in [-V, V) (negative counts from the end, as torch) that is initialized to zeros
        and never receives a gradient (it stays what it is: a "padding" vector).
    max_norm : float, optional
        Each forward first rescales, **in place**, every looked-up row whose ``norm_type``-norm
        exceeds ``max_norm`` to :math:`W_k \cdot \text{max\_norm} / (\|W_k\|_p + 10^{-7})`
        (torch's ``embedding_renorm_``; also in eval mode, as torch).
    norm_type : float
        p of that norm, > 0 (``inf``: the largest absolute value). torch also accepts p <= 0,
        which is no norm; fastreg refuses it.
    scale_grad_by_freq : bool
        Scale each row's gradient by the inverse frequency of its index in the mini-batch.
    sparse : bool
        Must be False: fastreg has no sparse gradients (``True`` raises ValueError).
    dtype : numpy dtype, optional
        float32 or float64; None means ``fastreg.get_default_dtype()``.

    Input: an int32 or int64 ndarray of any shape S (0-d included) with values in [0, V); a
    negative or too-large index is an ``IndexError`` naming it, raised before any kernel runs.
    Output: (*S, D), the weight's dtype. ``backward(grad_output)`` accumulates ``weight.grad``
    (a deterministic scatter-add: duplicate indices accumulate in input order, see
    :mod:`fastreg._kernels.embedding`) and returns None: integer indices have no gradient.
    ``weight.regularize`` is True (penalty and weight-decay groups apply to it by default).
    On a model moved with ``.to("cuda")`` the table lives on the GPU and the CUDA kernels run
    (a host index batch is copied in; the indices are bounds-checked on the host first).
    """

    layer_spec = LayerSpec(
        args={"num_embeddings": Arg(is_dim), "embedding_dim": Arg(is_dim),
              "padding_idx": Arg(_is_index_or_none), "max_norm": Arg(is_real_or_none),
              "norm_type": Arg(_is_norm_type), "scale_grad_by_freq": Arg(is_bool),
              "dtype": Arg(is_dtype, lambda m: m._parameters["weight"].data.dtype.name)},
        state=_embedding_state)

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0,
                 scale_grad_by_freq: bool = False, sparse: bool = False, _weight=None,
                 _freeze: bool = False, dtype=None):
        super().__init__()
        V = _positive_int("num_embeddings", num_embeddings)
        D = _positive_int("embedding_dim", embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
                raise TypeError(f"padding_idx must be an integer or None, got {padding_idx!r}")
            if not -V <= padding_idx < V:
                raise ValueError(f"padding_idx must be within num_embeddings: in [{-V}, {V}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % V
        if max_norm is not None:
            max_norm = check_scalar("max_norm", max_norm, low=0.0)
        if check_flag("sparse", sparse):
            raise ValueError("sparse=True is not supported: fastreg has no sparse gradients "
                             "(weight.grad is a dense (num_embeddings, embedding_dim) array)")
        self.num_embeddings = V
        self.embedding_dim = D
        self.padding_idx = padding_idx
        self.max_norm = max_norm
        self.norm_type = _embedding.check_norm_type(norm_type)
        self.scale_grad_by_freq = check_flag("scale_grad_by_freq", scale_grad_by_freq)
        self.sparse = False
        if _weight is None:
            self.weight = Parameter(np.empty((V, D), dtype=_resolve_dtype(dtype)),
                                    requires_grad=not _freeze, regularize=True)
            self.reset_parameters()
        else:
            w = _pretrained(_weight, dtype)
            if w.shape != (V, D):
                raise ValueError(f"_weight must have shape ({V}, {D}) (num_embeddings, "
                                 f"embedding_dim), got {w.shape}")
            self.weight = Parameter(w, requires_grad=not _freeze, regularize=True)
        self._cache = None

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0,
                        scale_grad_by_freq: bool = False, sparse: bool = False) -> Embedding:
        """An Embedding whose weight is (a copy of) the 2-D float array ``embeddings``.

        ``freeze=True`` (torch's default) sets ``weight.requires_grad = False``. The padding row
        is left as given (not zeroed), as torch. Unlike torch the array is copied, so training
        never writes into the caller's array.
        """
        freeze = check_flag("freeze", freeze)
        w = _pretrained(embeddings, None, "embeddings")
        if w.ndim != 2:
            raise ValueError(f"embeddings must be 2-dimensional (num_embeddings, "
                             f"embedding_dim), got shape {w.shape}")
        V, D = w.shape
        return cls(V, D, padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=w,
                   _freeze=freeze)

    def reset_parameters(self) -> None:
        """torch's: weight ~ N(0, 1) from fastreg's generator, the padding row zeroed."""
        from . import init
        init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            w = self.weight.data
            placement.of(w).fill(w[self.padding_idx], 0.0)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        return s

    def inference_ops(self) -> tuple:
        """Runs its own forward (``compile`` hands it float input: see EmbeddingLookup)."""
        return (ForwardOp(EmbeddingLookup(self)),)

    def forward(self, input: np.ndarray) -> np.ndarray:
        W = self._parameters["weight"].data
        wplace = placement.of(W)
        place = placement.of(input)
        if place is None:
            raise TypeError(f"{self._describe()}: input must be a numpy.ndarray of int64 or "
                            f"int32 indices, got {type(input).__name__}")
        if place is not HOST and wplace is HOST:
            raise ValueError(f"{self._describe()}: the input is a CUDA device array but the "
                             "module is on the CPU; call model.to('cuda') first (or pass "
                             "fastreg.cuda.to_host(x))")
        if place is HOST:
            idx = input if input.flags.c_contiguous else input.copy()   # (keeps 0-d input 0-d)
            host = idx
        else:
            idx = place.contiguous(input, f"{self._describe()}: input")
            host = place.to_host(idx)           # the bounds check reads the indices on the host
        _embedding.check_indices(f"{self._describe()}: input", host, self.num_embeddings)
        shape, n, D = tuple(host.shape), host.size, self.embedding_dim
        flat_host = host.reshape(n)
        dev = wplace is not HOST
        if not dev:
            self.__dict__["_place"] = HOST
            flat = flat_host
        elif place is HOST:
            flat = self._to_device_buffer("idx", flat_host)      # the "input in" copy
        else:
            self.__dict__["_place"] = wplace
            flat = idx.reshape(n)
        if self.max_norm is not None:
            _embedding.run_embedding_renorm(W, flat_host, self.max_norm, self.norm_type, dev)
        out = self._buffer("out", (n, D), W.dtype)
        _embedding.run_embedding_forward(W, flat, out, dev)
        self.__dict__["_cache"] = (flat, shape)
        return out.reshape((*shape, D))

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        """Accumulate ``weight.grad``; return None (integer indices have no gradient)."""
        flat, shape = self._require_cache()
        W = self._parameters["weight"]
        place = self._place
        what = f"{self._describe()}: grad_output"
        dy = grad_output
        if not place.owns(dy):
            if placement.of(dy) is None:
                raise TypeError(f"{what} must be a numpy.ndarray, got {type(dy).__name__}")
            dy = place.accept(dy, what)
        want = (*shape, self.embedding_dim)
        if tuple(dy.shape) != want:
            raise ValueError(f"{what} has shape {tuple(dy.shape)}, the last forward output had "
                             f"shape {want}")
        if dy.dtype != W.data.dtype:
            raise TypeError(f"{what} has dtype {dy.dtype}, expected {W.data.dtype}")
        if W.requires_grad:
            pad = -1 if self.padding_idx is None else self.padding_idx
            dy2 = place.contiguous(dy, what).reshape((flat.shape[0], self.embedding_dim))
            _embedding.run_embedding_backward(dy2, flat, W.grad_buffer(), pad,
                                              self.scale_grad_by_freq, place.is_device)


class EmbeddingLookup:
    """``inference.compile``'s stage for an Embedding (a :class:`ForwardOp` module).

    The predictor hands every stage its input cast to the model's float dtype, so this turns
    whole-number floats back into int64 indices (anything else is a ValueError) and runs the
    layer's forward. float32 holds integers exactly only up to 2**24: a float32 predictor of a
    larger table raises (compile with ``dtype=numpy.float64``).
    """

    def __init__(self, embedding: Embedding):
        self.embedding = embedding

    def forward(self, h: np.ndarray) -> np.ndarray:
        if h.dtype.kind == "f":
            emb = self.embedding
            if h.dtype == np.float32 and emb.num_embeddings > _F32_EXACT:
                raise ValueError(f"{emb._describe()}: a float32 predictor cannot represent "
                                 f"indices up to {emb.num_embeddings}; compile with "
                                 "dtype=numpy.float64")
            idx = h.astype(np.int64)
            if not np.array_equal(idx, h):
                bad = float(h[idx != h].flat[0])
                raise ValueError(f"{emb._describe()}: indices must be whole numbers, got {bad!r}")
            h = idx
        return self.embedding.forward(h)


def _pretrained(a, dtype, name: str = "_weight") -> np.ndarray:
    """A C-contiguous float32/float64 host copy of array-like ``a`` (``dtype`` casts)."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):         # a torch tensor
        a = a.detach().cpu().numpy()
    arr = placement.HOST.to_host(a) if placement.of(a) is not None else np.asarray(a)
    if dtype is not None:
        arr = arr.astype(_resolve_dtype(dtype))
    if arr.dtype not in _config.FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    return np.array(arr, order="C", copy=True)

