"""The model tree: modules <-> the JSON architecture a model file stores, from layer descriptions.

A node is ``{"type": "Linear", "args": {...}}``; a container (Sequential) adds ``"fuse"`` and
``"children": [[name, node], ...]``. Type names, constructor arguments (with their checks) and
the state each node implies all come from the layers' own ``layer_spec``
(:mod:`fastreg.nn._spec`); nothing about a particular layer is written here.

:func:`check_tree` validates an *untrusted* tree (depth, module count, known types, exact
argument sets, argument checks, child names) and derives the expected tensors
``{key: (shape, dtype)}`` without building anything, so a loader can compare them with the file
before allocating.
"""
from __future__ import annotations

from collections import OrderedDict

from .container import CHILD_RE, MAX_DEPTH, MAX_MODULES, ModelFileError

__all__ = ["architecture", "build", "check_tree", "registry"]


def _specs():
    """(LAYERS, spec_of), importing fastreg.nn (which registers its layers) on first use."""
    from ..nn import _spec
    return _spec.LAYERS, _spec.spec_of


def registry() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Type name -> (fastreg.nn class name, constructor argument names), derived from the
    registered layers (what ``fastreg.io.REGISTRY`` shows)."""
    layers, spec_of = _specs()
    return {name: (cls.__name__, tuple(spec_of(cls).args)) for name, cls in layers.items()}


def architecture(model) -> dict:
    """The JSON-serialisable module tree of ``model`` (what :func:`fastreg.io.save` writes).

    Raises
    ------
    TypeError
        For a module whose exact type is not a registered layer (subclasses are refused too:
        their extra behaviour could not be rebuilt from the file).
    ValueError
        When one module instance appears twice (files hold trees).
    """
    layers, spec_of = _specs()
    seen: set[int] = set()

    def node(m, where: str) -> dict:
        spec = spec_of(type(m))
        if spec is None:
            raise TypeError(f"cannot save module {where or '<root>'} of type "
                            f"{type(m).__module__}.{type(m).__qualname__}: fastreg model files "
                            f"hold only {sorted(layers)}")
        if id(m) in seen:
            raise ValueError(f"module {where} appears twice in the model; files hold trees")
        seen.add(id(m))
        out = {"type": type(m).__name__, "args": spec.read_args(m)}
        if spec.container:
            out["fuse"] = bool(getattr(m, "fuse", True))
            out["children"] = [[name, node(child, f"{where}.{name}" if where else name)]
                               for name, child in m._modules.items() if child is not None]
        return out

    return node(model, "")


def check_tree(tree, path: str, layers: tuple | None = None) -> dict:
    """Validate an untrusted architecture tree; return {state key: (shape, dtype)} in order.

    ``layers``: ``(type name -> entry, spec_of(entry))`` to check against instead of the
    registered layers of :mod:`fastreg.nn` (the light load path's descriptions,
    :data:`fastreg.io.ops_file.BUILTIN`, which do not import the layers)."""
    layers, spec_of = _specs() if layers is None else layers
    shapes: dict[str, tuple] = OrderedDict()
    count = [0]

    def walk(n, prefix: str, depth: int) -> None:
        where = prefix or "<root>"
        if depth > MAX_DEPTH:
            raise ModelFileError(f"{path}: architecture nested deeper than {MAX_DEPTH}")
        count[0] += 1
        if count[0] > MAX_MODULES:
            raise ModelFileError(f"{path}: architecture has more than {MAX_MODULES} modules")
        if not isinstance(n, dict) or not isinstance(n.get("type"), str):
            raise ModelFileError(f"{path}: architecture node {where} is not "
                                 "{'type': ..., 'args': ...}")
        tname = n["type"]
        cls = layers.get(tname)
        if cls is None:
            raise ModelFileError(f"{path}: unknown layer type {tname!r} at {where} (known: "
                                 f"{', '.join(sorted(layers))})")
        spec = spec_of(cls)
        allowed = {"type", "args", "children", "fuse"} if spec.container else {"type", "args"}
        extra = set(n) - allowed
        if extra:
            raise ModelFileError(f"{path}: unexpected field(s) {sorted(extra)} in {tname} at "
                                 f"{where}")
        args = n.get("args", {})
        full = spec.complete_args(args) if isinstance(args, dict) else None
        if full is None:
            got = sorted(args) if isinstance(args, dict) else type(args).__name__
            raise ModelFileError(f"{path}: {tname} at {where} needs arguments "
                                 f"{sorted(spec.args)}, got {got}")
        args = full
        for k, arg in spec.args.items():
            if not arg.check(args[k]):
                raise ModelFileError(f"{path}: {tname} at {where}: invalid {k}={args[k]!r}")
        pre = f"{prefix}." if prefix else ""
        for k, (shape, dt) in spec.state(args).items():
            shapes[pre + k] = (tuple(shape), dt)
        if spec.container:
            children = n.get("children", [])
            if not isinstance(children, list) or not isinstance(n.get("fuse", True), bool):
                raise ModelFileError(f"{path}: {tname} at {where}: malformed children/fuse")
            names = set()
            for item in children:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                        and CHILD_RE.match(item[0])):
                    raise ModelFileError(f"{path}: {tname} at {where}: child entries must "
                                         "be [name, node] with an identifier name, got "
                                         f"{str(item)[:80]}")
                if item[0] in names:
                    raise ModelFileError(f"{path}: {tname} at {where}: duplicate child "
                                         f"{item[0]!r}")
                names.add(item[0])
                walk(item[1], pre + item[0], depth + 1)

    walk(tree, "", 0)
    return shapes


def build(tree: dict, path: str = "<architecture>"):
    """Construct fresh modules from an architecture tree (validated here first).

    Building uses the constructors, which draw initial weights from fastreg's default generator;
    the generator's state is restored afterwards, so loading a model does not perturb the random
    stream of a training run.
    """
    from .. import _random
    layers, spec_of = _specs()
    check_tree(tree, path)
    state = _random.default_generator.get_state()

    def make(n):
        cls = layers[n["type"]]
        if spec_of(cls).container:
            children = n.get("children", [])
            seq = cls(OrderedDict((name, make(child)) for name, child in children))
            seq.fuse = n.get("fuse", True)
            return seq
        return cls(**spec_of(cls).complete_args(n["args"]))

    try:
        return make(tree)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot build the architecture: {exc}") from None
    finally:
        _random.default_generator.set_state(state)
