"""The Python interpreter of the argument rules in ``sencache_kernels/ops.def``.

Each ``SENCACHE_CHECK(op, KIND, "args", "other", "spec", "hint")`` line is a declarative rule; ``Checker`` applies an
op's rules, in file order, to the arguments of a call and raises ``ValueError`` with the ``SENCACHE_MESSAGE``
template of the first rule that fails. ``csrc/sencache/checks.cpp`` interprets the same table with the same templates
and the same field values (dtypes as ``torch.float32``, shapes as ``[2, 8]``, devices as ``cuda:0``), so the C++
extension and this pure-Python fallback raise identical messages (each op's test file feeds its failure cases to both
and compares them). Both kinds of kernels (real and fake) check
before they run, so a bad call fails the same way eagerly and under ``torch.compile``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, fields: dict[str, str]) -> str:
    """Replace every ``{name}`` of ``template`` with ``fields[name]`` (a table error raises KeyError)."""
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def _dtype_list(names: list[str]) -> str:
    """``"float32 bfloat16"`` -> ``"torch.float32 or torch.bfloat16"`` (and ``"a, b or c"`` for three)."""
    named = [f"torch.{n}" for n in names]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]


def _shape(v: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in v.shape) + "]"


# What each rule kind requires of an argument ``v`` (given the rule's ``other`` argument ``o`` and parsed spec ``s``).
_PREDICATES: dict[str, Callable[[Any, Any, Any], bool]] = {
    "HAS_BATCH": lambda v, o, s: v.dim() >= 1,
    "NONEMPTY_BATCH": lambda v, o, s: v.dim() >= 1 and v.shape[0] >= 1,
    "DTYPE": lambda v, o, s: v.dtype in s,
    "SCALAR": lambda v, o, s: v.dtype == s[0] and v.numel() == 1,
    "PER_SAMPLE": lambda v, o, s: v.dim() == 1 and v.shape[0] == o.shape[0],
    "SAME_DTYPE": lambda v, o, s: v.dtype == o.dtype,
    "SAME_SHAPE": lambda v, o, s: v.shape == o.shape,
    "SAME_DEVICE": lambda v, o, s: v.device == o.device,
    "RANGE": lambda v, o, s: s[0] <= v <= s[1],
    "NONZERO": lambda v, o, s: v != 0,
}


def _describe(prefix: str, v: Any) -> dict[str, str]:
    """The message fields of one argument value (tensor fields empty for an int, and the other way round)."""
    tensor = isinstance(v, torch.Tensor)
    return {
        f"{prefix}dtype": str(v.dtype) if tensor else "",
        f"{prefix}shape": _shape(v) if tensor else "",
        f"{prefix}device": str(v.device) if tensor else "",
        **({} if prefix else {"value": "" if tensor or v is None else str(v)}),
    }


class Checker:
    """The argument checks of one op: ``Checker(...)(*args)`` returns None or raises ValueError.

    Args:
        op: the op's name (``delta_norm``).
        schema: its schema from ``ops.def`` (argument names and which are optional).
        rules: its ``(kind, args, other, spec, hint)`` rules, in file order.
        messages: the message template of every rule kind.
    """

    def __init__(self, op: str, schema: str, rules: list[tuple[str, ...]], messages: dict[str, str]) -> None:
        arguments = torch._C.parse_schema(schema).arguments
        self.op = f"sencache::{op}"
        self.names = [a.name for a in arguments]
        self.optional = [isinstance(a.type, torch._C.OptionalType) for a in arguments]
        self.messages = messages
        index = {name: i for i, name in enumerate(self.names)}
        self.rules = []
        for kind, args, other, spec, hint in rules:
            if kind not in _PREDICATES or kind not in messages:
                raise ValueError(f"ops.def: unknown rule kind {kind} for {self.op}")
            words = spec.split()
            if kind in ("DTYPE", "SCALAR"):
                parsed, shown, lo, hi = tuple(getattr(torch, w) for w in words), _dtype_list(words), "", ""
            elif kind == "RANGE":
                parsed, shown, lo, hi = (int(words[0]), int(words[1])), spec, words[0], words[1]
            else:
                parsed, shown, lo, hi = (), spec, "", ""
            self.rules.append((kind, [index[a] for a in args.split()], index[other] if other else None, parsed,
                               {"spec": shown, "lo": lo, "hi": hi}, hint))

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        values = (*args, *(kwargs[name] for name in self.names[len(args):]))
        for kind, idxs, other, parsed, spec_fields, hint in self.rules:
            o = None if other is None else values[other]
            if other is not None:
                self._defined(other, o)
            for i in idxs:
                v = values[i]
                if v is None and self.optional[i]:
                    continue  # an absent optional tensor
                self._defined(i, v)
                if not _PREDICATES[kind](v, o, parsed):
                    self._fail(kind, i, other, values, spec_fields, hint)

    def _defined(self, i: int, v: Any) -> None:
        if v is None:  # unreachable through the dispatcher, which rejects None for a Tensor; kept for parity
            self._fail("UNDEFINED", i, None, (None,) * len(self.names), {"spec": "", "lo": "", "hi": ""}, "")

    def _fail(self, kind: str, i: int, other: int | None, values: tuple, spec_fields: dict[str, str],
              hint: str) -> None:
        o = None if other is None else values[other]
        fields = {"op": self.op, "arg": self.names[i], "other": "" if other is None else self.names[other],
                  **spec_fields, **_describe("", values[i]), **_describe("other_", o),
                  "batch": str(o.shape[0]) if isinstance(o, torch.Tensor) and o.dim() >= 1 else ""}
        fields["hint"] = "; " + fill(hint, fields) if hint else ""
        raise ValueError(fill(self.messages[kind], fields))
