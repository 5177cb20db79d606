"""nn.utils: clip_grad_norm_ / clip_grad_value_ / parameters_to_vector / vector_to_parameters
against torch 2.13 (float64 to 1e-12, float32 to 1e-6), None gradients skipped, bad arguments
refused, and on CUDA gradients (the simulator)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fastreg import nn
from fastreg.nn import utils

torch = pytest.importorskip("torch")

SHAPES = ((7, 3), (33,), (1,), (2, 257))


def _params(dtype, scale=1.0, seed=0, none_at=None):
    """fastreg Parameters and torch tensors with equal values and gradients (one grad None)."""
    g = np.random.default_rng(seed)
    ours, theirs = [], []
    for i, shape in enumerate(SHAPES):
        p = nn.Parameter(g.standard_normal(shape).astype(dtype))
        t = torch.tensor(p.data.copy(), requires_grad=True)
        if i != none_at:
            p.grad = (g.standard_normal(shape) * scale).astype(dtype)
            t.grad = torch.tensor(p.grad.copy())
        ours.append(p)
        theirs.append(t)
    return ours, theirs


def _same_grads(ours, theirs, dtype):
    r = 1e-6 if dtype == np.float32 else 1e-12
    for p, t in zip(ours, theirs):
        if t.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=r, atol=r)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])           # clips / does not clip
def test_clip_grad_norm_equals_torch(dtype, norm_type, max_norm):
    ours, theirs = _params(dtype, none_at=1)
    total = utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    r = 1e-6 if dtype == np.float32 else 1e-12
    assert total == pytest.approx(ttotal.item(), rel=r)
    _same_grads(ours, theirs, dtype)


def test_clip_grad_norm_single_parameter_generator_and_no_grads(dtype):
    ours, theirs = _params(dtype, scale=5.0)
    total = utils.clip_grad_norm_(ours[0], 1.0)
    assert total == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs[0], 1.0).item(), 1e-6)
    m = nn.Linear(3, 2, dtype=dtype)
    assert utils.clip_grad_norm_(m.parameters(), 1.0) == 0.0      # no gradients yet
    assert m.weight.grad is None


def test_clip_grad_norm_nonfinite(dtype):
    ours, theirs = _params(dtype)
    ours[0].grad[0, 0] = np.inf
    theirs[0].grad[0, 0] = math.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert utils.clip_grad_norm_(ours, 1.0) == math.inf
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    for p, t in zip(ours, theirs):                  # scaled by 1 / inf: zeros (and one nan)
        np.testing.assert_array_equal(p.grad, t.grad.numpy())


def test_clip_grad_norm_refuses_bad_arguments():
    ours, _ = _params(np.float64)
    with pytest.raises(ValueError, match="max_norm must be in"):
        utils.clip_grad_norm_(ours, -1.0)
    with pytest.raises(ValueError, match="norm_type must be in"):
        utils.clip_grad_norm_(ours, 1.0, norm_type=0)
    with pytest.raises(ValueError, match="norm_type must be a number > 0 or 'inf'"):
        utils.clip_grad_norm_(ours, 1.0, norm_type="two")
    with pytest.raises(TypeError, match=r"parameters\[1\] must be a fastreg.nn.Parameter"):
        utils.clip_grad_norm_([ours[0], np.ones(3)], 1.0)
    with pytest.raises(TypeError, match="error_if_nonfinite must be a bool"):
        utils.clip_grad_norm_(ours, 1.0, error_if_nonfinite=1)
    with pytest.raises(TypeError, match="foreach must be None or a bool"):
        utils.clip_grad_norm_(ours, 1.0, foreach="yes")


def test_clip_grad_value_equals_torch(dtype):
    ours, theirs = _params(dtype, none_at=2)
    utils.clip_grad_value_(ours, 0.3)
    torch.nn.utils.clip_grad_value_(theirs, 0.3)
    _same_grads(ours, theirs, dtype)
    assert max(np.abs(p.grad).max() for p in ours if p.grad is not None) == \
        pytest.approx(0.3)
    with pytest.raises(ValueError, match="clip_value must be in"):
        utils.clip_grad_value_(ours, -0.1)


def test_parameters_to_vector_and_back_equal_torch(dtype):
    ours, theirs = _params(dtype)
    v = utils.parameters_to_vector(ours)
    np.testing.assert_array_equal(v, torch.nn.utils.parameters_to_vector(theirs).detach())
    held = [p.data for p in ours]
    utils.vector_to_parameters(v[::-1].copy(), ours)
    torch.nn.utils.vector_to_parameters(torch.tensor(v[::-1].copy()), theirs)
    for p, t, h in zip(ours, theirs, held):
        np.testing.assert_array_equal(p.data, t.detach().numpy())
        assert p.data is h                                  # copied in place, not re-pointed
    with pytest.raises(ValueError, match=f"vec has 3 elements, the parameters have {v.size}"):
        utils.vector_to_parameters(np.ones(3), ours)
    with pytest.raises(TypeError, match="expected a numpy.ndarray"):
        utils.vector_to_parameters([1.0], ours)


def test_on_cuda_gradients(cuda):
    ours, theirs = _params(np.float64, none_at=0)
    dev = [nn.Parameter(cuda.to_device(p.data)) for p in ours]
    for d, p in zip(dev, ours):
        if p.grad is not None:
            d.grad = cuda.to_device(p.grad)
    for norm_type in (2.0, math.inf):
        total = utils.clip_grad_norm_(dev, 0.5, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type=norm_type)
        assert total == pytest.approx(ttotal.item(), rel=1e-12)
    utils.clip_grad_value_(dev, 0.01)
    torch.nn.utils.clip_grad_value_(theirs, 0.01)
    for d, t in zip(dev, theirs):
        if t.grad is not None:
            np.testing.assert_allclose(d.grad.copy_to_host(), t.grad.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(utils.parameters_to_vector(dev),
                                  torch.nn.utils.parameters_to_vector(theirs).detach())
