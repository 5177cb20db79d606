"""Module: the base class of every layer, loss and container (shaped like ``torch.nn.Module``).

A module owns Parameters (learnable arrays with gradients), buffers (running statistics) and child
modules, registered by attribute assignment as in torch, so ``state_dict`` keys are torch's
(``"0.weight"``, ``"1.running_mean"``, ``"1.num_batches_tracked"`` ...).

Forward and backward are explicit, as in llm.c: ``forward(x)`` computes the output and caches what
``backward`` needs (the input reference, saved statistics, dropout mask bits);
``backward(grad_output, *, input_grad=True)`` accumulates ``p.grad`` and returns dL/dx (None
when ``input_grad`` is False: the caller does not need it). Every built-in layer has this pair.
A subclass that defines only ``forward`` gets its backward from the tape
(:mod:`fastreg.nn._tape`): its training-mode forward is recorded -- child module calls, each
with its own saved context, and the supported array operations -- and ``backward`` replays it.

Buffer ownership (why reusing output buffers is safe): every layer writes its output into an
array it owns and reuses across calls of the same shape. A layer's output is cached as the *next*
layer's input; both are overwritten only by the next forward pass, which also refreshes that
cache. Two things could break this and are ruled out: (1) one module instance appearing twice in
a model (its second call would overwrite the output the first call handed on) -- ``Sequential``
rejects it; (2) the caller keeping the array ``model(x)`` returned -- the outermost call returns
a copy of a module-owned result (the logits, small), so what the caller holds is the caller's.
Two rules remain the caller's: the input ``x`` is cached by reference, so do not modify it in
place between ``forward`` and ``backward`` (torch would refuse through its version counter);
and the array ``backward`` returns is module-owned, valid until the next backward.
"""
from __future__ import annotations

import functools
from _thread import get_ident as _get_ident
from collections import OrderedDict, namedtuple
from collections.abc import Iterator

import numpy as np

from .. import _config
from .._checks import check_flag
from .._kernels import placement
from .._kernels.placement import HOST
from . import _tape
from .parameter import Parameter

#: Device names ``Module.to`` accepts ("cuda:0" is "cuda": fastreg uses the current device).
DEVICES = ("cpu", "cuda")

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

# Per thread: the depth of nested Module.__call__ (0 = the caller's own call; only the outermost
# call copies a module-owned result, see the module docstring), the tape being recorded, and the
# grad mode. One model instance must not run in two threads at once (its buffers and caches are
# per instance): the outermost call marks the model busy and a second thread gets a clear error.
_local = _tape._local


class Module:
    """Base class: parameters, buffers and children registered by attribute assignment.

    Subclasses implement ``forward(*inputs)``. Backward, either:

    * **automatic** -- define only ``forward``. In training mode (outside ``fastreg.no_grad``)
      the forward is recorded on a tape and ``backward(grad_output, *, input_grad=True)``
      accumulates every ``p.grad`` and returns dL/d(input) (a tuple for several array inputs).
      What may be recorded is listed in :mod:`fastreg.nn._tape`; anything else raises
      ``TypeError``. Or
    * **hand-written** -- also define ``backward(self, grad_output, *, input_grad=True)``: cache
      what it needs in ``forward``, accumulate parameter gradients with ``+=`` (into
      ``p.grad_buffer()``), and return dL/dx (a tuple with one entry per positional input for a
      multi-input forward), or None when ``input_grad`` is False. ``input_grad`` may be left out
      of the signature (``def backward(self, g)``); the caller then always gets dL/dx. A
      hand-written backward wins over the tape.
    """

    #: True for classes whose backward is the tape's (set per subclass, see __init_subclass__)
    _fr_taped = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._fr_taped = cls.backward is Module.backward
        fwd = cls.__dict__.get("forward")
        # only taped classes pay for the entry wrapper (a built-in layer's forward is its own)
        if cls._fr_taped and fwd is not None and not getattr(fwd, "_fr_tape_entry", False):
            cls.forward = _tape_entry(fwd)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_out_buffers", {})
        # where this module's work runs: "cpu", "cuda", or None = wherever the input is
        # (parameter-free layers never moved); _place: the placement (fastreg._kernels.placement)
        # of the last forward's input, where its buffers are allocated
        object.__setattr__(self, "_device", None)
        object.__setattr__(self, "_place", HOST)

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        d = self.__dict__
        if name in d and not isinstance(value, (Parameter, Module)):
            d[name] = value        # re-binding a plain attribute (a layer's cache): the hot case
            return
        if "_parameters" not in d:
            raise AttributeError("call Module.__init__() before assigning attributes")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, Parameter):
            if name in params:
                self._check_replacement(name, value.data, params[name])
            buffers.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                "(a fastreg.nn.Parameter or None is required)")
            params[name] = None
        elif name in buffers:
            if value is not None and placement.of(value) is None:
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r}")
            self._check_replacement(name, value, buffers[name])
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r}")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _check_replacement(self, name: str, new, old) -> None:
        """A layer's kernels trust the shapes and dtypes of its parameters and buffers (they are
        checked here, not per call): a replacement keeps the old array's shape and dtype, or,
        where the old value is None (``bias=False``), the shape its layer description declares.
        """
        if new is None:
            return
        if isinstance(old, Parameter):
            old = old.data
        if old is not None:
            want = (tuple(old.shape), np.dtype(old.dtype))
        else:
            from ._spec import spec_of
            spec = spec_of(type(self))
            declared = None if spec is None else \
                spec.state(spec.read_args(self)).get(name)
            if declared is None:
                return                      # nothing declared: the module's own business
            want = (tuple(declared[0]), np.dtype(declared[1]))
        got = (tuple(new.shape), np.dtype(new.dtype))
        if got != want:
            raise ValueError(f"{type(self).__name__}.{name} must keep shape {want[0]} and dtype "
                             f"{want[1]}, got shape {got[0]} and dtype {got[1]}")

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or None, e.g. ``bias=False``) under ``name``."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"param must be a fastreg.nn.Parameter or None, "
                            f"got {type(param).__name__}")
        if param is not None and name in self._parameters:
            self._check_replacement(name, param.data, self._parameters[name])
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: np.ndarray | None,
                        persistent: bool = True) -> None:
        """Add a buffer (state that is not learned, e.g. ``running_mean``) under ``name``.

        Persistent buffers appear in :meth:`state_dict`.
        """
        if tensor is not None and placement.of(tensor) is None:
            raise TypeError(f"buffer {name!r} must be a numpy.ndarray or None, "
                            f"got {type(tensor).__name__}")
        if name in self._buffers:
            self._check_replacement(name, tensor, self._buffers[name])
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a fastreg.nn.Module")
        self.__dict__.pop(name, None)
        self._modules[name] = module

    # -- traversal ----------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield (qualified name, module) for this module and every descendant, once each."""
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """Yield (qualified name, Parameter), each Parameter once, in registration order."""
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mprefix}.{name}" if mprefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True
                      ) -> Iterator[tuple[str, np.ndarray]]:
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mprefix}.{name}" if mprefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn) -> Module:
        """Call ``fn(m)`` on every child (recursively), then on self, as torch."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes and gradients ------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, dropout on); returns self."""
        mode = check_flag("mode", mode)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """Inference mode (running statistics, dropout off); returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every parameter's gradient in place.

        The default differs from torch (``set_to_none=True``) on purpose: an optimizer may have
        pointed ``p.grad`` at a view of its flat gradient buffer, which must stay in place.
        """
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                placement.of(p.grad).fill(p.grad, 0.0)

    # -- device -------------------------------------------------------------------------------
    def to(self, device: str) -> Module:
        """Move parameters, gradients and floating buffers to ``device`` ("cpu" or "cuda").

        In place, as torch: the Parameter objects stay the same (an optimizer built earlier
        follows them on its next step), only their arrays move. On "cuda" every forward and
        backward then runs on the GPU and returns device arrays; a host input batch is copied
        in by the first layer. ``num_batches_tracked`` (an integer counter) stays on the host.
        Raises RuntimeError when no CUDA device is found. Returns self.
        """
        dev = _check_device(device)
        place = placement.for_device(dev)       # raises without a usable GPU
        for m in self.modules():
            for p in m._parameters.values():
                if p is None:
                    continue
                p.data = place.put(p.data)
                if p.grad is not None:
                    p.grad = place.put(p.grad)
            for name, b in m._buffers.items():
                if b is not None and np.dtype(b.dtype).kind == "f":
                    m._buffers[name] = place.put(b)
            m._out_buffers.clear()
            object.__setattr__(m, "_device", dev)
            object.__setattr__(m, "_place", place)
            if "_cache" in m.__dict__:
                object.__setattr__(m, "_cache", None)
        return self

    def cuda(self) -> Module:
        """``self.to("cuda")``."""
        return self.to("cuda")

    def cpu(self) -> Module:
        """``self.to("cpu")``."""
        return self.to("cpu")

    @property
    def device(self) -> str:
        """"cuda" if the parameters live on the GPU, else "cpu" (parameter-free: where moved)."""
        for p in self.parameters():
            return "cuda" if p.is_cuda else "cpu"
        return self._device or "cpu"

    def _place_input(self, x, what: str = "input"):
        """The module call's one placement decision: ``x`` where this module runs, and that
        place recorded as ``self._place`` (``_buffer`` allocates there). A host batch is copied
        into a CUDA module (the "input in" copy); a device array given to a host module, or a
        non-array, is an error naming the module."""
        if type(x) is np.ndarray and self._device != "cuda":
            self.__dict__["_place"] = HOST          # the common case, without a lookup
            return x
        place = placement.of(x)
        if place is None:
            raise TypeError(f"{self._describe()}: {what} must be a numpy.ndarray, "
                            f"got {type(x).__name__}")
        if self._device == "cuda" and place is HOST:
            x = self._to_device_buffer(what, x)
            place = placement.cuda()
        elif self._device == "cpu" and place is not HOST:
            raise ValueError(f"{self._describe()}: the {what} is a CUDA device array but the "
                             "module is on the CPU; call model.to('cuda') first (or pass "
                             "fastreg.cuda.to_host(x))")
        self.__dict__["_place"] = place
        return x

    # -- state --------------------------------------------------------------------------------
    def state_dict(self, destination=None, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """Parameters and persistent buffers by torch's key names, as **copies**.

        Copies (unlike torch's shared tensors) so that a saved state -- e.g. early stopping's
        best weights -- does not change when training goes on in place.
        """
        out = OrderedDict() if destination is None else destination
        for mprefix, m in self.named_modules(prefix=prefix.rstrip(".")):
            pre = f"{mprefix}." if mprefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out[pre + name] = _host_copy(p.data)
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[pre + name] = _host_copy(b)
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays from ``state_dict`` into this module's parameters and buffers in place.

        Values may be numpy arrays (or anything ``numpy.asarray`` accepts, e.g. a torch tensor's
        ``.numpy()``); floating values are cast to the module's dtype. Arrays are never rebound
        (``p.data[...] = value``), so optimizers holding views stay valid.

        Returns ``(missing_keys, unexpected_keys)``; with ``strict=True`` either being non-empty,
        and in any mode a shape mismatch or a value that cannot be cast to the module's dtype,
        raises ``RuntimeError`` before anything is copied (all or nothing).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        targets = OrderedDict()
        for mprefix, m in self.named_modules():
            pre = f"{mprefix}." if mprefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    targets[pre + name] = p.data
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    targets[pre + name] = b
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        errors = []
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(map(repr, unexpected)))
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(map(repr, missing)))
        values = {}
        for key, dst in targets.items():
            if key not in state_dict:
                continue
            try:        # every value is converted and cast before anything is copied
                src = np.asarray(HOST.to_host(state_dict[key]))
                if src.shape == dst.shape:
                    src = src.astype(dst.dtype, copy=False)
            except (TypeError, ValueError, OverflowError) as exc:
                errors.append(f"cannot convert {key} to a {dst.dtype} array: {exc}")
                continue
            if src.shape != dst.shape:
                errors.append(f"size mismatch for {key}: copying a param with shape {src.shape} "
                              f"from checkpoint, the shape in current model is {dst.shape}")
                continue
            values[key] = src
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        for key, src in values.items():
            placement.of(targets[key]).copy_into(targets[key], src)
        return _IncompatibleKeys(missing, unexpected)

    # -- compute ------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_output, *, input_grad: bool = True):
        """dL/d(input) from dL/d(output) by replaying the tape of the last training-mode
        forward (see the class docstring); accumulates every ``p.grad``. The tape is freed."""
        if not type(self)._fr_taped:
            raise NotImplementedError(f"{type(self).__name__} does not implement backward")
        tape = self.__dict__.get("_tape")
        if tape is None:
            raise RuntimeError(
                f"{type(self).__name__}: backward() needs a recorded forward: run forward in "
                "training mode, outside fastreg.no_grad(), first (each forward can be "
                "back-propagated once)")
        self.__dict__["_tape"] = None
        return tape.backward(grad_output, bool(input_grad))

    def __call__(self, *args, **kwargs):
        st = _local
        depth = st.depth
        if depth:
            tape = st.tape
            st.depth = depth + 1
            try:
                if tape is not None and not type(self)._fr_taped:
                    return tape.call(self, args, kwargs)       # one node on the tape
                return self.forward(*args, **kwargs)
            finally:
                st.depth = depth
        if _config._state["backend"] == "cuda" and self._device != "cuda":
            self.to("cuda")    # set_backend("cuda"): models run on the GPU from their first call
        d = self.__dict__
        me = _get_ident()
        owner = d.setdefault("_busy", me)            # atomic: one thread runs a model at a time
        if owner != me:
            raise RuntimeError(
                f"{type(self).__name__} is running in another thread: a model instance keeps "
                "per-call buffers and caches, so it must not be called from two threads at "
                "once; use one model per thread, or fastreg.inference.compile(model) (its "
                "predictor is thread-safe) for concurrent inference")
        st.depth = 1
        try:
            out = self.forward(*args, **kwargs)
            if not st.grad_enabled:
                _drop_caches(self)
        finally:
            st.depth = 0
            d.pop("_busy", None)
        if args:
            x = args[0]
            if type(out) is np.ndarray:                 # the host case, without lookups
                if not (type(x) is np.ndarray and np.may_share_memory(out, x)):
                    out = out.copy()   # the caller keeps it; the module reuses its buffer
            elif _is_owned_result(out, x):
                out = _copy(out)
        return out

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set ``requires_grad`` of every parameter (freeze with False); returns self."""
        flag = check_flag("requires_grad", requires_grad)
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def __getstate__(self):
        # the tape (closures) and the per-call marker are not state; buffers are re-made
        d = dict(self.__dict__)
        for k in ("_tape", "_busy", "_buffer_sets"):
            d.pop(k, None)
        d["_out_buffers"] = {}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)

    def _place_target(self, key: str, a: np.ndarray):
        """A checked host array (a loss's target) where this call runs: itself on the host, a
        module-owned device copy on the GPU."""
        return a if self._place is HOST else self._to_device_buffer(key, a)

    def _to_device_buffer(self, key: str, a: np.ndarray):
        """Host array ``a`` copied into a module-owned device buffer (reused across calls, so a
        training step does not allocate device memory for its input batch or targets)."""
        self.__dict__["_place"] = placement.cuda()
        buf = self._buffer(key, a.shape, a.dtype)
        buf.copy_to_device(np.ascontiguousarray(a))
        return buf

    def _buffer(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """A module-owned output/scratch array of ``shape``, reused across calls.

        Where this call's input is (``self._place``, set by ``_place_input``). Backed by one flat
        array per ``key`` that only grows, so a smaller batch (the last of
        an epoch) or a return to the training batch after validation allocates nothing: the
        result is a C-contiguous view of the first ``prod(shape)`` elements.
        """
        place = self._place
        entry = self._out_buffers.get(key)
        if entry is not None and entry[1].shape == shape and entry[1].dtype == dtype \
                and entry[2] is place:
            return entry[1]                       # steady state: same shape as last call
        n = 1
        for d in shape:
            n *= d
        flat = None if entry is None or entry[2] is not place else entry[0]
        if flat is None or flat.size < n or flat.dtype != dtype:
            flat = place.empty(max(n, 1), dtype)
        view = flat[:n].reshape(shape)
        self._out_buffers[key] = (flat, view, place)
        return view

    def _require_cache(self, attr: str = "_cache"):
        cache = self.__dict__.get(attr)
        if cache is None:
            raise RuntimeError(f"{self._describe()}: backward() called before forward(); run "
                               "a forward pass (in the same mode) first")
        return cache

    # -- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def _describe(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        main = type(self).__name__ + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


def _tape_entry(fn):
    """Wrap a subclass's ``forward``: the outermost forward of a taped module (no hand-written
    backward) starts a tape -- recording in training mode with gradients enabled -- and returns
    plain arrays; nested inside a recording forward it records onto the same tape."""
    @functools.wraps(fn)
    def forward(self, *args, **kwargs):
        st = _local
        if st.tape is not None or not type(self)._fr_taped:
            return fn(self, *args, **kwargs)
        d = self.__dict__
        d["_tape"] = None                  # a forward that fails leaves nothing to backward
        record = self.training and st.grad_enabled
        tape = _tape.Tape(record)
        if record:
            args = tape.wrap_inputs(args)
            _tape.recording(True)
        st.tape = tape
        try:
            out = fn(self, *args, **kwargs)
            out = tape.finish(out) if record else out
        finally:
            st.tape = None
            if record:
                _tape.recording(False)
        if record:
            d["_tape"] = tape
        return out
    forward._fr_tape_entry = True
    return forward


def _drop_caches(model) -> None:
    """Under no_grad: forget what a backward would need (the input references, the tape)."""
    for m in model.modules():
        d = m.__dict__
        for k in ("_cache", "_plan", "_tape"):
            if d.get(k) is not None:
                d[k] = None


def _check_device(device) -> str:
    name = device if isinstance(device, str) else None
    if name is not None and name.startswith("cuda:"):
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return name


def _host_copy(a) -> np.ndarray:
    return HOST.copy(a)


def _is_owned_result(out, x) -> bool:
    """Is ``out`` an array distinct from the input ``x`` (so a module-owned buffer)?"""
    place = placement.of(out)
    if place is None:
        return False
    return not (placement.of(x) is place and place.may_share_memory(out, x))


def _copy(a):
    return placement.of(a).copy(a)
