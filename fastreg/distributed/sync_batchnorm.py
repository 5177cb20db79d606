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

    Forward: the batch-norm kernel gives this rank's mean :math:`m_r` and variance
    :math:`v_r` (``run_batchnorm_forward_train`` with eps = 0: float64 sums of shifted data);
    one ``Allreduce`` of :math:`N_r m_r` and :math:`N_r` gives :math:`\mu`, a second one of
    :math:`N_r (v_r + (m_r-\mu)^2)` gives :math:`M\sigma^2` (the parallel-variance formula: no
    :math:`E[x^2]-E[x]^2` cancellation), and ``run_batchnorm_forward_eval`` normalizes with
    these global statistics. Running statistics get :math:`\mu` and the unbiased
    :math:`\sigma^2 M/(M-1)`, identical on every rank.

    Backward, with :math:`\hat x = (x-\mu) r`, :math:`r = (\sigma^2+\epsilon)^{-1/2}`: the
    batch-norm backward kernel, given :math:`\mu` and :math:`r`, returns this rank's sums
    :math:`S_{1r} = \sum dy`, :math:`S_{2r} = \sum dy\,\hat x` and the local
    :math:`dx_r = \gamma r (dy - S_{1r}/N_r - \hat x S_{2r}/N_r)`; one ``Allreduce`` of the two
    sums gives the global :math:`S_1, S_2`, and one pass adds the difference to

    .. math::
        dx = \gamma r \left(dy - \frac{S_1}{M} - \hat x\,\frac{S_2}{M}\right),

    the gradient of the sum of all ranks' losses; :math:`\partial\gamma`, :math:`\partial\beta`
    receive this rank's partial sums :math:`S_{2r}, S_{1r}` (``DistributedOptimizer`` averages
    them with the other gradients). So 2 ranks × batch k train exactly as 1 process × batch 2k
    with ``BatchNorm1d``.

    In a world of one, and in evaluation mode, it is ``BatchNorm1d``. CPU only.

    It is not a registered layer type of model files (a file must load without MPI): save the
    trained model after :func:`revert_sync_batchnorm` for a file ``fastreg.load`` rebuilds on
    its own; a converted model saves as a custom module (state and class name) and loads into
    a given instance, ``fastreg.load(path, model=...)``. ``fit``'s checkpoints store its weights
    by key and need nothing.
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
        out = self._buffer("out", x.shape, dt)
        buf = np.zeros(C + 1)
        local_mean = local_var = 0.0
        if N > 0:
            lm = self._buffer("local_mean", (C,), dt)
            lr = self._buffer("local_rstd", (C,), dt)
            # this rank's statistics (out is scratch here, overwritten below)
            _norm.run_batchnorm_forward_train(x, None, None, None, None, out, lm, lr, 0.0, 0.0,
                                              False)
            local_mean = lm.astype(np.float64)
            with np.errstate(divide="ignore", over="ignore"):
                local_var = 1.0 / np.square(lr.astype(np.float64))   # rstd = inf: var = 0
            buf[:C] = N * local_mean
        buf[C] = N
        _allreduce_inplace(buf)
        M = int(buf[C])
        if M < 2:
            raise ValueError(f"{self._describe()}: expected more than 1 value per channel when "
                             f"training, got a global batch of {M}")
        mean = buf[:C] / M
        sq = N * (local_var + np.square(local_mean - mean)) if N > 0 else np.zeros(C)
        _allreduce_inplace(sq)
        var = sq / M
        mean_d = mean.astype(dt)
        rstd = 1.0 / np.sqrt(var + self.eps)
        gamma = self.weight.data if self.affine else None
        beta = self.bias.data if self.affine else None
        _norm.run_batchnorm_forward_eval(x, gamma, beta, mean_d, var.astype(dt), out, self.eps,
                                         False)
        if self.track_running_stats:
            self.num_batches_tracked += 1
            m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None \
                else self.momentum
            rm, rv = self.running_mean, self.running_var
            rm[...] = (1.0 - m) * rm + m * mean
            rv[...] = (1.0 - m) * rv + m * (var * (M / (M - 1.0)))
        self._cache = (x, mean_d, rstd.astype(dt), M)
        return out

    def backward(self, grad_output: np.ndarray, *, input_grad: bool = True):
        if not getattr(self, "_sync", False):
            return super().backward(grad_output, input_grad=input_grad)
        x, mean, rstd, M = self._require_cache()
        dt = self._dtype
        dy = _check_grad(self, grad_output, x.shape, dt)
        N, C = x.shape
        gamma = self.weight.data if self.affine else None
        s1 = self._buffer("sum_dy", (C,), dt)            # this rank's sum of dy
        s2 = self._buffer("sum_dy_xhat", (C,), dt)       # and of dy * xhat
        dx = self._buffer("dx", x.shape, dt)
        if N > 0:
            # local sums, and dx as if this rank's rows were the whole batch
            _norm.run_batchnorm_backward(dy, x, gamma, mean, rstd, dx, s2, s1, False, False)
        else:
            s1.fill(0.0)
            s2.fill(0.0)
        if self.affine:
            if self.bias.requires_grad:
                self.bias.grad_buffer()[...] += s1
            if self.weight.requires_grad:
                self.weight.grad_buffer()[...] += s2
        sums = np.concatenate([s1, s2]).astype(np.float64)
        _allreduce_inplace(sums)                          # the global S1, S2
        if not input_grad or N == 0:
            return dx if input_grad else None
        # dx += a r (S2r/N - S2/M) (x - mean) + a (S1r/N - S1/M),  a = gamma r
        r = rstd.astype(np.float64)
        a = r if gamma is None else gamma.astype(np.float64) * r
        B = (a * r * (s2 / N - sums[C:] / M)).astype(dt)
        A = (a * (s1 / N - sums[:C] / M)).astype(dt)
        tmp = self._buffer("dx_fix", x.shape, dt)
        np.subtract(x, mean, out=tmp)
        tmp *= B
        tmp += A
        dx += tmp
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
