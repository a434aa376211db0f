"""Small immutable typed records: what is passed between the stages.

Why not `dataclasses`: importing it costs about 16 ms of CPU (it pulls in `inspect`, `ast`, `dis`),
and generating each class's methods about 0.5 ms more: together more than the whole header-only
analysis of an 8B model, whose budget is twice a bare header-parsing script's time (benchmarks/).
A record declares its fields as annotated class attributes; a value given there is the default.
TensorInfo, a thousand per checkpoint header, is a named tuple with the same surface (tensors.py).
"""

from __future__ import annotations


_NO_DEFAULT = object()


class Record:
    """Fields come from the class annotations (base classes first); instances are immutable."""

    _fields: tuple[str, ...] = ()
    _field_names: frozenset = frozenset()
    _defaults: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # In order, base classes first, each once (a dict keeps the first place a name takes).
        fields = dict.fromkeys(name for klass in reversed(cls.__mro__) for name in vars(klass).get("__annotations__", ())
                               if not name.startswith("_"))
        cls._fields = tuple(fields)
        cls._field_names = frozenset(fields)
        cls._defaults = {name: value for name in fields if (value := getattr(cls, name, _NO_DEFAULT)) is not _NO_DEFAULT}

    def __init__(self, *args, **kwargs):
        # Straight into the instance's dict, checked once at the end: the quantized decoder builds a
        # record per weight and the stages several per layer, all on the start-up budget.
        values = self.__dict__
        values.update(self._defaults)
        if args:
            if len(args) > len(self._fields):
                raise TypeError(f"{type(self).__name__} takes {len(self._fields)} fields, got {len(args)}")
            if kwargs and not kwargs.keys().isdisjoint(self._fields[:len(args)]):
                wrong = next(name for name in self._fields[:len(args)] if name in kwargs)
                raise TypeError(f"{type(self).__name__}: repeated field {wrong!r}")
            values.update(zip(self._fields, args))
        values.update(kwargs)
        if len(values) != len(self._fields) or not self._field_names.issuperset(kwargs):
            wrong = next((name for name in kwargs if name not in self._field_names), None)
            if wrong is not None:
                raise TypeError(f"{type(self).__name__}: unexpected field {wrong!r}")
            missing = next(name for name in self._fields if name not in values)
            raise TypeError(f"{type(self).__name__}: missing field {missing!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; use .replace()")

    def replace(self, **changes):
        """A copy with some fields changed (dataclasses.replace). Only the changes need checking: the
        other fields were checked when this record was made."""
        if not self._field_names.issuperset(changes):
            wrong = next(name for name in changes if name not in self._field_names)
            raise TypeError(f"{type(self).__name__}: unexpected field {wrong!r}")
        values = self.__dict__
        record = object.__new__(type(self))
        fields = record.__dict__
        for name in self._fields:
            fields[name] = values[name]
        fields.update(changes)
        return record

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(self.__dict__[name] == other.__dict__[name] for name in self._fields)

    __hash__ = None  # records hold dicts and lists; they are compared, never hashed

    def __repr__(self):
        inside = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__name__}({inside})"
