"""``SyncBatchNorm``: batch normalization over the global batch of a data-parallel job."""
from __future__ import annotations

import numpy as np

from .._kernels import norm as _norm
from ..nn.layers import BatchNorm1d, Sequential, _check_grad, _check_input
from . import _comm


def _allreduce_inplace(buf: np.ndarray) -> None:
    if _comm.world_size() > 1:
        MPI = _comm.mpi()
        _comm.comm().Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)


class SyncBatchNorm(BatchNorm1d):
    r"""``BatchNorm1d`` whose training statistics are those of the global batch (all ranks).

    With rank r holding :math:`N_r` rows of the global batch of :math:`M = \sum_r N_r`:

    .. math::
        \mu = \frac1M \sum_{r,n} x_{rn},\quad
        \sigma^2 = \frac1M \sum_{r,n} (x_{rn}-\mu)^2,\quad
        y = \gamma\,(x-\mu)\,(\sigma^2+\epsilon)^{-1/2} + \beta

    Forward: one ``Allreduce`` of the per-feature float64 sums :math:`\sum_n x_n` (and
    :math:`N_r`), then one of :math:`\sum_n (x_n-\mu)^2` (two passes: no cancellation for data
    with a large mean); the normalization is the batch-norm kernel with these global statistics
    (``run_batchnorm_forward_eval``). Running statistics get :math:`\mu` and the unbiased
    :math:`\sigma^2 M/(M-1)`, identical on every rank.

    Backward, with :math:`\hat x = (x-\mu) r`, :math:`r = (\sigma^2+\epsilon)^{-1/2}`: one
    ``Allreduce`` of the two per-feature sums :math:`S_1 = \sum dy`, :math:`S_2 = \sum dy\,\hat x`
    over the global batch, then

    .. math::
        dx = \gamma r \left(dy - \frac{S_1}{M} - \hat x\,\frac{S_2}{M}\right),

    the gradient of the sum of all ranks' losses; :math:`\partial\gamma`, :math:`\partial\beta`
    receive this rank's partial sums (``DistributedOptimizer`` averages them with the other
    gradients). So 2 ranks × batch k train exactly as 1 process × batch 2k with ``BatchNorm1d``.

    In a world of one, and in evaluation mode, it is ``BatchNorm1d``. CPU only.

    It is not a registered layer type of model files (a file must load without MPI): save the
    trained model after :func:`revert_sync_batchnorm` (``fit``'s checkpoints store its weights
    by key and need nothing).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        if _comm.world_size() == 1 or not self.training:
            self._sync = False
            return super().forward(x)
        self._sync = True
        dt = self._dtype
        x = _check_input(self, x, dt, min_ndim=2)
        if self._place.is_device:
            raise TypeError(f"{self._describe()}: SyncBatchNorm runs on the CPU (the MPI "
                            "allreduce takes host arrays)")
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self._describe()}: input has shape {x.shape}, expected "
                             f"(N, {self.num_features}) (num_features={self.num_features})")
        N, C = x.shape
        buf = np.empty(C + 1)
        np.sum(x, axis=0, dtype=np.float64, out=buf[:C])
        buf[C] = N
        _allreduce_inplace(buf)
        M = int(buf[C])
        if M < 2:
            raise ValueError(f"{self._describe()}: expected more than 1 value per channel when "
                             f"training, got a global batch of {M}")
        mean = buf[:C] / M
        xc = x - mean                                       # float64 (N, C)
        sq = np.einsum("nc,nc->c", xc, xc)
        _allreduce_inplace(sq)
        var = sq / M
        mean_d, var_d = mean.astype(dt), var.astype(dt)
        gamma = self.weight.data if self.affine else None
        beta = self.bias.data if self.affine else None
        out = self._buffer("out", x.shape, dt)
        _norm.run_batchnorm_forward_eval(x, gamma, beta, mean_d, var_d, out, self.eps, False)
        if self.track_running_stats:
            self.num_batches_tracked += 1
            m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None \
                else self.momentum
            rm, rv = self.running_mean, self.running_var
            rm[...] = (1.0 - m) * rm + m * mean
            rv[...] = (1.0 - m) * rv + m * (var * (M / (M - 1.0)))
        self._cache = (x, mean, 1.0 / np.sqrt(var + self.eps), M)
        return out

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        if not getattr(self, "_sync", False):
            return super().backward(grad_output, input_grad=input_grad)
        x, mean, r, M = self._require_cache()
        dt = self._dtype
        dy = _check_grad(self, grad_output, x.shape, dt)
        C = x.shape[1]
        xhat = (x - mean) * r                               # float64 (N, C)
        sums = np.empty(2 * C)
        np.sum(dy, axis=0, dtype=np.float64, out=sums[:C])
        np.einsum("nc,nc->c", dy, xhat, out=sums[C:])
        if self.affine:                                      # this rank's partial sums
            if self.bias.requires_grad:
                db = self.bias.grad_buffer()
                db += sums[:C].astype(dt)
            if self.weight.requires_grad:
                dg = self.weight.grad_buffer()
                dg += sums[C:].astype(dt)
        _allreduce_inplace(sums)                             # the global S1, S2
        if not input_grad:
            return None
        g = r if not self.affine else self.weight.data.astype(np.float64) * r
        dx = self._buffer("dx", x.shape, dt)
        dx[...] = g * (dy - sums[:C] / M - xhat * (sums[C:] / M))
        return dx


def _swap(model, match, cls):
    if match(model):
        new = cls.__new__(cls)
        new.__dict__.update(model.__dict__)
        new.__dict__.pop("_sync", None)
        new._cache = None
        return new
    for name, child in list(model._modules.items()):
        if child is None:
            continue
        new = _swap(child, match, cls)
        if new is not child:
            model._modules[name] = new
    if isinstance(model, Sequential):
        object.__setattr__(model, "_plan", None)
    return model


def convert_sync_batchnorm(model):
    """Replace every ``BatchNorm1d`` in ``model`` by a :class:`SyncBatchNorm` with the same
    parameters, buffers and settings (the arrays are shared, not copied), like torch's
    ``SyncBatchNorm.convert_sync_batchnorm``; returns the model (or the new layer when ``model``
    is itself a BatchNorm1d)."""
    return _swap(model, lambda m: type(m) is BatchNorm1d, SyncBatchNorm)


def revert_sync_batchnorm(model):
    """The inverse of :func:`convert_sync_batchnorm`: every ``SyncBatchNorm`` becomes a plain
    ``BatchNorm1d`` sharing its arrays (for ``fastreg.save`` and single-process use)."""
    return _swap(model, lambda m: type(m) is SyncBatchNorm, BatchNorm1d)
