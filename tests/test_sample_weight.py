"""Sample and class weights through DataLoader and fit: the weighted mean of per-sample losses
(scikit-learn's definition), weighted validation, class_weight="balanced" as sklearn."""
import numpy as np
import pytest

import fastreg as fr
from fastreg import nn
from fastreg.train.fit import class_weights, weighted_loss


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def _model(seed=0):
    fr.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8, dtype=np.float64), nn.Tanh(),
                         nn.Linear(8, 2, dtype=np.float64))


@pytest.mark.parametrize("loss_fn, target", [
    (nn.CrossEntropyLoss(), lambda rng, n: rng.integers(0, 3, n)),
    (nn.MSELoss(), lambda rng, n: rng.standard_normal((n, 3))),
    (nn.BCEWithLogitsLoss(), lambda rng, n: rng.integers(0, 2, (n, 3)).astype(np.float64)),
])
def test_weighted_loss_value_and_gradient(loss_fn, target):
    """L = sum w_i l_i / sum w_i, l_i the per-sample loss (mean over its outputs); the gradient
    against finite differences."""
    rng = np.random.default_rng(1)
    n = 7
    out = rng.standard_normal((n, 3))
    t = target(rng, n)
    w = rng.uniform(0, 2, n)
    loss, g = weighted_loss(loss_fn, out, t, w)
    assert loss_fn.reduction == "mean"          # restored
    loss_fn.reduction = "none"
    per = np.asarray(loss_fn(out, t), dtype=np.float64).reshape(n, -1).mean(axis=1)
    loss_fn.reduction = "mean"
    assert loss == pytest.approx(float(np.dot(w, per) / w.sum()), rel=1e-12)
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (6, 1)]:
        o2 = out.copy()
        o2[i, j] += eps
        lp = weighted_loss(loss_fn, o2, t, w, grad=False)[0]
        o2[i, j] -= 2 * eps
        lm = weighted_loss(loss_fn, o2, t, w, grad=False)[0]
        assert g[i, j] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)


def test_integer_weights_equal_repeated_samples():
    """Full-batch, no shuffle: weight 2 trains exactly like the sample given twice."""
    X, y = _data(20)
    w = np.ones(20)
    w[:5] = 2.0
    Xr, yr = np.concatenate([X, X[:5]]), np.concatenate([y, y[:5]])
    res = []
    for data, kw in (((X, y), {"sample_weight": w}), ((Xr, yr), {})):
        m = _model(3)
        opt = fr.optim.SGD(m.parameters(), lr=0.1)
        fr.train.fit(m, nn.CrossEntropyLoss(), opt, train=data, epochs=5, batch_size=100,
                     shuffle=False, progress=False, **kw)
        res.append(np.concatenate([p.data.ravel() for p in m.parameters()]))
    np.testing.assert_allclose(res[0], res[1], rtol=1e-10, atol=1e-12)


def test_zero_weight_samples_are_ignored_and_validation_is_weighted():
    X, y = _data(40)
    noise = np.random.default_rng(5).integers(0, 2, 40)      # garbage labels, weight 0
    Xa, ya = np.concatenate([X, X]), np.concatenate([y, noise])
    w = np.concatenate([np.ones(40), np.zeros(40)])
    m1, m2 = _model(1), _model(1)
    for m, data, kw in ((m1, (Xa, ya), {"sample_weight": w}), (m2, (X, y), {})):
        fr.train.fit(m, nn.CrossEntropyLoss(), fr.optim.SGD(m.parameters(), lr=0.1),
                     train=data, epochs=3, batch_size=1000, shuffle=False, progress=False,
                     **kw)
    for a, b in zip(m1.parameters(), m2.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-10, atol=1e-12)
    h = fr.train.fit(m1, nn.CrossEntropyLoss(), fr.optim.SGD(m1.parameters(), lr=0.0),
                     train=(X, y), valid=(Xa, ya, w), epochs=1, progress=False)
    ref = fr.train.evaluate(m1, nn.CrossEntropyLoss(), X, y)
    assert h["val_loss"][0] == pytest.approx(ref["loss"], rel=1e-12)
    assert h["val_accuracy"][0] == pytest.approx(ref["accuracy"], rel=1e-12)


def test_class_weight_balanced_matches_sklearn():
    sk = pytest.importorskip("sklearn.utils.class_weight")
    y = np.array([0, 0, 0, 1, 2, 2, 0, 1, 0])
    cw = sk.compute_class_weight("balanced", classes=np.unique(y), y=y)
    np.testing.assert_allclose(class_weights("balanced", y), cw[y])
    np.testing.assert_allclose(class_weights({1: 3.0}, y), np.where(y == 1, 3.0, 1.0))
    with pytest.raises(ValueError, match="class_weight"):
        class_weights("balance", y)
    with pytest.raises(ValueError, match="integer class labels"):
        class_weights("balanced", y.astype(float))


def test_class_weight_balanced_equals_explicit_sample_weight():
    X, y = _data(50)
    y[:40] = 0                               # imbalanced
    w = class_weights("balanced", y)
    res = []
    for kw in ({"class_weight": "balanced"}, {"sample_weight": w}):
        m = _model(2)
        fr.train.fit(m, nn.CrossEntropyLoss(), fr.optim.Adam(m.parameters(), lr=0.01),
                     train=(X, y), epochs=2, batch_size=16, seed=0, progress=False, **kw)
        res.append(np.concatenate([p.data.ravel() for p in m.parameters()]))
    np.testing.assert_array_equal(res[0], res[1])


def test_bad_weights_are_refused():
    X, y = _data(10)
    m = _model()
    opt = fr.optim.SGD(m.parameters(), lr=0.1)
    for w, msg in ((np.ones(9), "shape"), (-np.ones(10), ">= 0"), (np.zeros(10), "positive"),
                   (np.full(10, np.nan), "finite")):
        with pytest.raises(ValueError, match=msg):
            fr.train.fit(m, nn.CrossEntropyLoss(), opt, train=(X, y), sample_weight=w,
                         progress=False)
    with pytest.raises(ValueError, match="reduction='mean'"):
        fr.train.fit(m, nn.CrossEntropyLoss(reduction="sum"), opt, train=(X, y),
                     sample_weight=np.ones(10), progress=False)


def test_dataloader_yields_weights():
    X, y = _data(10)
    w = np.arange(10.0) + 1
    dl = fr.data.DataLoader(X, y, batch_size=4, shuffle=True, seed=3, sample_weight=w)
    seen = []
    for xb, yb, wb in dl:
        idx = [int(np.flatnonzero((X == r).all(axis=1))[0]) for r in xb]
        np.testing.assert_array_equal(wb, w[idx])
        seen += idx
    assert sorted(seen) == list(range(10))


def test_ignored_samples_leave_the_weighted_mean():
    """CrossEntropyLoss(ignore_index): an ignored sample's weight is not in the denominator
    (torch's weighted mean), so the loss equals the one over the kept samples only."""
    rng = np.random.default_rng(2)
    out = rng.standard_normal((6, 3))
    t = np.array([0, 2, -100, 1, -100, 2])
    w = rng.uniform(0.5, 2.0, 6)
    keep = t != -100
    loss, g = weighted_loss(nn.CrossEntropyLoss(), out, t, w)
    ref, gref = weighted_loss(nn.CrossEntropyLoss(), out[keep], t[keep], w[keep])
    assert loss == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(g[keep], gref, rtol=1e-12)
    assert not np.any(g[~keep])
