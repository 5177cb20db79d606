"""Fuzzing the model-file and checkpoint readers: whatever the damage, only ModelFileError.

A seeded mutation fuzzer (reproducible: the case number is in every failure message) over

* the ZIP structures (local headers, central directory, end record): bit flips, random bytes,
  0xFF runs in size/offset fields;
* the JSON header tree, re-written with valid CRCs so the damage reaches the decoder: nodes
  replaced by hostile values (negative and huge numbers, wrong types, deep nesting, repeated
  array references, long strings);
* the ``.npy`` member headers, also with valid CRCs;

plus hypothesis-generated checkpoint state trees. Each case loads a model (``fastreg.load``)
or loads and resumes a checkpoint (``resume`` into a model, optimizer and scheduler); the
only exception allowed is :class:`fastreg.ModelFileError`, and a failed resume must leave the
model untouched.

CI runs ``FASTREG_FUZZ_CASES`` cases per fuzzer and file kind (default 350: about 1,800 cases
in all, ~10 s of CPU time). For a release check run e.g.::

    FASTREG_FUZZ_CASES=100000 FASTREG_FUZZ_SEED=7 python -m pytest -q tests/test_fuzz_files.py
"""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest

import fastreg as fr
from fastreg import io as frio
from fastreg import nn
from fastreg.io import ModelFileError
from fastreg.train import EarlyStopping
from fastreg.train.checkpoint import resume, save_checkpoint

CASES = int(os.environ.get("FASTREG_FUZZ_CASES", "350"))
SEED = int(os.environ.get("FASTREG_FUZZ_SEED", "0"))


def _model():
    fr.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.1),
                         nn.Linear(5, 2))


def _run_parts():
    model = _model()
    opt = fr.optim.Adam(model.parameters(), lr=0.01)
    sched = fr.optim.lr_scheduler.StepLR(opt, step_size=2)
    return model, opt, sched


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    model, opt, sched = _run_parts()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    model(x)
    model.backward(np.ones((8, 2), np.float32))
    opt.step()
    sched.step()
    frio.save(model, d / "m.fr", metadata={"features": ["a", "b", "c", "d"]})
    save_checkpoint(d / "ck.fr", model, opt, sched, epoch=1, global_step=1,
                    callbacks=[EarlyStopping(monitor="loss")])
    return {"model": (d / "m.fr").read_bytes(), "checkpoint": (d / "ck.fr").read_bytes()}


def _try(kind: str, data: bytes, path, case, parts=None) -> None:
    """Load (and for checkpoints resume) ``data``; only ModelFileError may escape."""
    path.write_bytes(data)
    try:
        if kind == "model":
            frio.load(path)
        else:
            model, opt, sched = parts if parts is not None else _run_parts()
            before = {k: v.copy() for k, v in model.state_dict().items()}
            try:
                resume(path, model, opt, sched, callbacks=[EarlyStopping(monitor="loss")])
            except ModelFileError:
                for k, v in model.state_dict().items():
                    assert np.array_equal(v, before[k]), f"case {case}: {k} half-restored"
                raise
    except ModelFileError:
        pass
    except Exception as exc:
        raise AssertionError(f"case {case} ({kind}, seed {SEED}): {type(exc).__name__}: "
                             f"{exc}") from exc


def _header_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the ZIP structures: local headers, central directory entries, end
    record (fixed parts plus names)."""
    out = []
    for sig, fixed, name_at in ((b"PK\x03\x04", 30, 26), (b"PK\x01\x02", 46, 28),
                                (b"PK\x05\x06", 22, None)):
        i = data.find(sig)
        while i >= 0:
            end = i + fixed
            if name_at is not None and i + name_at + 2 <= len(data):
                end += struct.unpack_from("<H", data, i + name_at)[0]
            out.append((i, min(end, len(data))))
            i = data.find(sig, i + 4)
    return out


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_fuzz_zip_headers(originals, tmp_path, kind):
    data = originals[kind]
    ranges = _header_ranges(data)
    weights = np.array([b - a for a, b in ranges], float)
    rng = np.random.default_rng([SEED, 1, kind == "model"])
    parts = _run_parts()
    for case in range(CASES):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 3))):
            a, b = ranges[rng.choice(len(ranges), p=weights / weights.sum())]
            i = int(rng.integers(a, b))
            op = rng.integers(0, 4)
            if op == 0 or op == 1:
                buf[i] ^= 1 << int(rng.integers(0, 8))
            elif op == 2:
                buf[i] = int(rng.integers(0, 256))
            else:
                buf[i:i + 4] = b"\xff\xff\xff\xff"[:len(buf[i:i + 4])]
        _try(kind, bytes(buf), tmp_path / f"{kind}.fr", case, parts)


def _hostile_value(rng):
    choices = [None, -1, 0, 2**63, 10**30, -(2**40), 1.5, float("nan"), "", "x" * 5000, [],
               {}, [[[[[]]]]], {"__array__": "a0"}, {"__array__": "../x"},
               {"__array__": "a0", "scalar": True}, {"__tuple__": [[1]]}, {"__items__": [[[1], 2]]},
               {"__items__": "no"}, {"__float__": "1e999"}, {"type": "Linear"}, True, "a0",
               {"shape": [-1], "dtype": "float32"}, {"shape": [2**40, 2**40], "dtype": "<f4"}]
    return choices[int(rng.integers(len(choices)))]


def _mutate_json(node, rng, depth=0):
    """Replace one random node of the JSON tree ``node`` (in place where possible)."""
    if isinstance(node, dict) and node and depth < 40:
        key = list(node)[int(rng.integers(len(node)))]
        if rng.random() < 0.3:
            node[key] = _hostile_value(rng)
        elif rng.random() < 0.1:
            del node[key]
        else:
            node[key] = _mutate_json(node[key], rng, depth + 1)
        return node
    if isinstance(node, list) and node and depth < 40:
        i = int(rng.integers(len(node)))
        r = rng.random()
        if r < 0.3:
            node[i] = _hostile_value(rng)
        elif r < 0.4:
            node.append(node[i])                 # duplicates (repeated array references)
        elif r < 0.5:
            node.pop(i)
        else:
            node[i] = _mutate_json(node[i], rng, depth + 1)
        return node
    return _hostile_value(rng)


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_fuzz_json_header(originals, tmp_path, kind):
    members = _members(originals[kind])
    header = json.loads(members["fastreg.json"])
    rng = np.random.default_rng([SEED, 2, kind == "model"])
    parts = _run_parts()
    for case in range(CASES):
        h = json.loads(json.dumps(header))
        for _ in range(int(rng.integers(1, 4))):
            h = _mutate_json(h, rng)
        m = dict(members)
        m["fastreg.json"] = json.dumps(h).encode()
        _try(kind, _zip(m), tmp_path / f"{kind}.fr", case, parts)


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_fuzz_npy_headers(originals, tmp_path, kind):
    members = _members(originals[kind])
    names = sorted(n for n in members if n.endswith(".npy"))
    rng = np.random.default_rng([SEED, 3, kind == "model"])
    parts = _run_parts()
    edits = [b"'shape': (-1,", b"'shape': (99999999999,", b"'descr': '|O'", b"'descr': '<c16'",
             b"'fortran_order': True", b"'shape': (0, -1)", b"'descr': '<U3'", b"(((", b"\x00"]
    for case in range(CASES // 2):
        m = dict(members)
        name = names[int(rng.integers(len(names)))]
        raw = bytearray(m[name])
        hlen = min(len(raw), 128)
        if rng.random() < 0.5:
            i = int(rng.integers(0, hlen))
            raw[i] ^= 1 << int(rng.integers(0, 8))
        else:
            e = edits[int(rng.integers(len(edits)))]
            i = int(rng.integers(8, max(9, hlen - len(e))))
            raw[i:i + len(e)] = e
        m[name] = bytes(raw)
        _try(kind, _zip(m), tmp_path / f"{kind}.fr", case, parts)


def test_fuzz_checkpoint_state_trees_hypothesis(originals, tmp_path):
    hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
    st = hypothesis.strategies
    members = _members(originals["checkpoint"])
    header = json.loads(members["fastreg.json"])
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                       st.text(max_size=8), st.sampled_from(["a0", "a1", "__array__"]))
    trees = st.recursive(leaves, lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.sampled_from(
            ["__array__", "__tuple__", "__items__", "__float__", "scalar", "epoch", "model",
             "state", "param_groups", "params", "seed"]), c, max_size=3)), max_leaves=8)
    fields = st.sampled_from(["model", "optimizer", "scheduler", "rng", "loader", "callbacks",
                              "history", "epoch", "global_step"])
    count = [0]
    parts = _run_parts()

    @hypothesis.settings(max_examples=max(CASES // 6, 10), deadline=None, database=None,
                         derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(field=fields, value=trees)
    def check(field, value):
        count[0] += 1
        h = json.loads(json.dumps(header))
        for item in h["state"]["__items__"]:
            if item[0] == field:
                item[1] = value
        m = dict(members)
        m["fastreg.json"] = json.dumps(h).encode()
        _try("checkpoint", _zip(m), tmp_path / "h.fr", f"hypothesis {count[0]}", parts)

    check()
