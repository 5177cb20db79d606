"""ModuleList and ModuleDict: containers that register their modules, as ``torch.nn``'s.

They have no ``forward``: a custom Module holds them and decides how its children run. The
children are registered under their position (``"0"``, ``"1"`` ...) or key, so a parent's
``state_dict`` keys are torch's (``"layers.0.weight"``, ``"heads.cls.bias"``) and
``parameters()``, ``train()``, ``to()``, ``zero_grad()`` reach them.
"""
from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain

from .module import Module

__all__ = ["ModuleDict", "ModuleList"]


def _check_name(container: Module, name) -> str:
    """torch's rules for a child name: a non-empty string without ".", not an attribute."""
    if not isinstance(name, str):
        raise TypeError(f"module name should be a string. Got {type(name).__name__}")
    if name == "":
        raise KeyError('module name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'module name can\'t contain ".", got: {name}')
    if name not in container._modules and hasattr(container, name):
        raise KeyError(f"attribute '{name}' already exists")
    return name


def _addindent(s: str, spaces: int) -> str:
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class ModuleList(Module):
    """Modules in a list, registered as children ``"0"``, ``"1"``, ... (``torch.nn.ModuleList``).

    Indexing (negative too), slicing (a new ModuleList of the same modules), assignment,
    ``del`` (renumbers the rest), ``append``, ``extend``, ``insert``, ``pop``, ``+`` (a new
    list), ``+=``, iteration and ``len`` behave as on a Python list. No ``forward``.
    ``insert`` with a negative index counts from the end as ``list.insert`` (torch's raises
    KeyError there).
    """

    def __init__(self, modules: Iterable[Module] | None = None):
        super().__init__()
        if modules is not None:
            self += modules

    def add_module(self, name: str, module: Module | None) -> None:
        super().add_module(_check_name(self, name), module)

    def _get_abs_string_index(self, idx) -> str:
        """The registered name of position ``idx`` (negative counts from the end)."""
        if isinstance(idx, bool):
            raise TypeError("ModuleList indices must be integers or slices, not bool")
        try:
            idx = operator.index(idx)
        except TypeError:
            raise TypeError(f"ModuleList indices must be integers or slices, not "
                            f"{type(idx).__name__}") from None
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range")
        if idx < 0:
            idx += n
        return str(idx)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self.__class__(list(self._modules.values())[idx])
        return self._modules[self._get_abs_string_index(idx)]

    def __setitem__(self, idx, module: Module) -> None:
        self.add_module(self._get_abs_string_index(idx), module)

    def __delitem__(self, idx) -> None:
        if isinstance(idx, slice):
            for k in range(len(self._modules))[idx]:
                del self._modules[str(k)]
        else:
            del self._modules[self._get_abs_string_index(idx)]
        self._renumber(list(self._modules.values()))

    def _renumber(self, modules: list) -> None:
        self._modules.clear()
        for i, m in enumerate(modules):
            self._modules[str(i)] = m

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __dir__(self):
        return [k for k in super().__dir__() if not k.isdigit()]      # as torch

    def __iadd__(self, modules: Iterable[Module]) -> ModuleList:  # noqa: PYI034 (py3.10: no Self)
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> ModuleList:
        combined = ModuleList()
        for i, module in enumerate(chain(self, other)):
            combined.add_module(str(i), module)
        return combined

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` (as ``list.insert``)."""
        if isinstance(index, bool):
            raise TypeError("index must be an integer, got bool")
        index = operator.index(index)
        mods = list(self._modules.values())
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a fastreg.nn.Module")
        mods.insert(index, module)
        self._renumber(mods)

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def pop(self, key=-1) -> Module:
        """Remove and return the module at ``key`` (the last by default)."""
        v = self[key]
        del self[key]
        return v

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append every module of the iterable ``modules``; returns self."""
        if not isinstance(modules, Iterable):
            raise TypeError("ModuleList.extend should be called with an iterable, but got "
                            + type(modules).__name__)
        offset = len(self)
        for i, module in enumerate(modules):
            self.add_module(str(offset + i), module)
        return self

    def __repr__(self) -> str:
        """torch's: consecutive equal entries are shown once, as ``(0-2): 3 x Linear(...)``."""
        reprs = [repr(m) for m in self]
        if not reprs:
            return type(self).__name__ + "()"
        blocks: list[list] = []                 # [start, end, repr]
        for i, r in enumerate(reprs):
            if blocks and blocks[-1][2] == r:
                blocks[-1][1] = i
            else:
                blocks.append([i, i, r])
        lines = []
        for start, end, r in blocks:
            line = f"({start}): {r}" if start == end else \
                f"({start}-{end}): {end - start + 1} x {r}"
            lines.append(_addindent(line, 2))
        return type(self).__name__ + "(\n  " + "\n  ".join(lines) + "\n)"


class ModuleDict(Module):
    """Modules by name, in insertion order, registered as children (``torch.nn.ModuleDict``).

    ``d[key]``, ``d[key] = m``, ``del d[key]``, ``key in d``, ``len``, iteration over the keys,
    ``keys()``, ``values()``, ``items()``, ``update()``, ``pop()``, ``clear()``. Keys are
    non-empty strings without ``"."`` that do not shadow an attribute (``"train"`` is refused),
    as torch. No ``forward``.
    """

    def __init__(self, modules: Mapping[str, Module] | Iterable | None = None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def add_module(self, name: str, module: Module | None) -> None:
        super().add_module(_check_name(self, name), module)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        del self._modules[key]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def clear(self) -> None:
        """Remove every module."""
        self._modules.clear()

    def pop(self, key: str) -> Module:
        """Remove the module ``key`` and return it."""
        v = self[key]
        del self[key]
        return v

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def update(self, modules) -> None:
        """Add or overwrite modules from a mapping (its order) or an iterable of (key, module)
        pairs, as torch's ``ModuleDict.update``."""
        if not isinstance(modules, Iterable):
            raise TypeError("ModuleDict.update should be called with an iterable of key/value "
                            "pairs, but got " + type(modules).__name__)
        if isinstance(modules, (OrderedDict, ModuleDict, Mapping)):
            for key, module in modules.items():
                self[key] = module
            return
        for j, m in enumerate(modules):
            if not isinstance(m, Iterable):
                raise TypeError(f"ModuleDict update sequence element #{j} should be Iterable; "
                                f"is {type(m).__name__}")
            if not len(m) == 2:
                raise ValueError(f"ModuleDict update sequence element #{j} has length "
                                 f"{len(m)}; 2 is required")
            self[m[0]] = m[1]
