"""The one-line ``condition`` of a rule, e.g. ``all of require_* and not any of exclude_*``.

Grammar (``and`` binds tighter than ``or``)::

    expr   := term ("or" term)*
    term   := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | ("all" | "any" | "1") "of" PATTERN | NAME

A PATTERN may end in ``*``. Values are three-valued (True, False, None = unknown because data needed to decide
is incomplete) and combine by Kleene logic, so ``not`` of an unknown stays unknown and a rule never fires on
the absence of data it could not see.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Tri = bool | None
_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9_*]+)")


def all_of(values: Iterable[Tri]) -> Tri:
    """Kleene conjunction; stops at the first False (the values may be computed lazily)."""
    unknown = False
    for value in values:
        if value is False:
            return False
        unknown = unknown or value is None
    return None if unknown else True


def any_of(values: Iterable[Tri]) -> Tri:
    """Kleene disjunction; stops at the first True."""
    unknown = False
    for value in values:
        if value is True:
            return True
        unknown = unknown or value is None
    return None if unknown else False


def not_(value: Tri) -> Tri:
    return None if value is None else not value


class ExpressionError(ValueError):
    """The condition text cannot be parsed or names no criteria block."""


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed condition: ``evaluate`` maps block states to the rule's state; ``names`` lists blocks used."""

    evaluate: Callable[[Mapping[str, Tri]], Tri]
    names: frozenset[str]


def parse(text: str, blocks: Iterable[str]) -> Expression:
    """Parse ``text`` against the rule's block names; raise ExpressionError with a readable reason."""
    known = list(blocks)
    tokens = _tokens(text)
    position = 0
    used: set[str] = set()

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = peek()
        if token is None or (expected is not None and token.lower() != expected):
            raise ExpressionError(f"expected {expected or 'more'} at token {position + 1} in {text!r}")
        position += 1
        return token

    def names_for(pattern: str) -> list[str]:
        matched = [name for name in known if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise ExpressionError(f"{pattern!r} matches no criteria block")
        used.update(matched)
        return matched

    def factor() -> Callable[[Mapping[str, Tri]], Tri]:
        token = take()
        word = token.lower()
        if word == "not":
            inner = factor()
            return lambda states: not_(inner(states))
        if token == "(":
            inner = expr()
            take(")")
            return inner
        if word in ("all", "any", "1"):
            take("of")
            matched = names_for(take())
            combine = all_of if word == "all" else any_of
            return lambda states: combine(map(states.__getitem__, matched))  # no generator frame per call
        if "*" in token:
            raise ExpressionError(f"a pattern needs 'all of' or 'any of' before it: {token!r}")
        (name,) = names_for(token)
        return lambda states: states[name]

    def term() -> Callable[[Mapping[str, Tri]], Tri]:
        parts = [factor()]
        while (peek() or "").lower() == "and":
            take()
            parts.append(factor())
        return parts[0] if len(parts) == 1 else lambda states: all_of(p(states) for p in parts)

    def expr() -> Callable[[Mapping[str, Tri]], Tri]:
        parts = [term()]
        while (peek() or "").lower() == "or":
            take()
            parts.append(term())
        return parts[0] if len(parts) == 1 else lambda states: any_of(p(states) for p in parts)

    evaluate = expr()
    if peek() is not None:
        raise ExpressionError(f"unexpected {peek()!r} at token {position + 1} in {text!r}")
    return Expression(evaluate=evaluate, names=frozenset(used))


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise ExpressionError(f"unexpected character {text[position]!r} in {text!r}")
        tokens.append(match.group(1))
        position = match.end()
    if not tokens:
        raise ExpressionError("the condition is empty")
    return tokens
