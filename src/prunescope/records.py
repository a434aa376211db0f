"""Small immutable typed records: what is passed between the stages.

Why not `dataclasses`: importing it costs about 16 ms of CPU (it pulls in `inspect`, `ast`, `dis`),
and generating each class's methods about 0.5 ms more: together more than the whole header-only
analysis of an 8B model, whose budget is twice a bare header-parsing script's time (benchmarks/).
A record declares its fields as annotated class attributes; a value given there is the default.
"""

from __future__ import annotations


class Record:
    """Fields come from the class annotations (base classes first); instances are immutable."""

    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields: list[str] = []
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("__annotations__", {}):
                if not name.startswith("_") and name not in fields:
                    fields.append(name)
        cls._fields = tuple(fields)
        cls._field_set = frozenset(fields)
        cls._defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}
        cls._required = frozenset(name for name in fields if name not in cls._defaults)

    def __init__(self, *args, **kwargs):
        # Records are made by the thousand (a tensor index of a quantized 8B model holds ~700): the
        # common case, every field given or defaulted by keyword, takes one dict merge.
        fields = self._fields
        if args:
            if len(args) > len(fields):
                raise TypeError(f"{type(self).__name__} takes {len(fields)} fields, got {len(args)}")
            positional = dict(zip(fields, args))
            if kwargs and not kwargs.keys().isdisjoint(positional):
                repeated = next(name for name in kwargs if name in positional)
                raise TypeError(f"{type(self).__name__}: unexpected or repeated field {repeated!r}")
            kwargs.update(positional)
        if not self._field_set.issuperset(kwargs):
            unexpected = next(name for name in kwargs if name not in self._field_set)
            raise TypeError(f"{type(self).__name__}: unexpected or repeated field {unexpected!r}")
        if len(kwargs) < len(fields):
            if not kwargs.keys() >= self._required:
                missing = next(name for name in fields if name not in kwargs and name in self._required)
                raise TypeError(f"{type(self).__name__}: missing field {missing!r}")
            kwargs = {**self._defaults, **kwargs}
        self.__dict__.update(kwargs)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace()")

    def replace(self, **changes):
        """A copy with some fields changed (dataclasses.replace)."""
        return type(self)(**{**{name: self.__dict__[name] for name in self._fields}, **changes})

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(self.__dict__[name] == other.__dict__[name] for name in self._fields)

    __hash__ = None  # records hold dicts and lists; they are compared, never hashed

    def __repr__(self):
        inside = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__name__}({inside})"
