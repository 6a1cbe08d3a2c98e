"""Symptoms documented only as free text ("Leg cramps" in ``Condition.code.text``, no coding).

The words come from ``symptom-observations.json``: ``text_terms`` names each concept's words (cramp: "cramps",
"cramping", "charley horse" ...; spasm: "spasms", "muscle spasm" ...). The text is cut into clauses at ``.``,
``;``, ``,``, line breaks and "but", "however", "although", "though", "except"; a word counts unless, in its
clause, a ``negation_cues`` word stands before it ("no cramps", "denies fever or cramps", "negative for cramps",
"without cramps"), one of the ``negation_strings`` follows it ("cramps: no", "cramps - none", "cramps absent"), or
one of the ``not_muscle_qualifiers`` stands right before it ("abdominal cramps", "menstrual cramps").

What the guard does not catch (README "Rules"): negation outside the clause ("Cramps? No."), double negation
("not without cramps" is read as negated), a cue that governs something else in the clause ("no relief of
cramps" is read as negated), hedges and history ("possible cramps", "cramps resolved", "history of cramps" all
count), other languages, misspellings, and spasms of non-skeletal muscle the qualifiers do not name.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_CLAUSES = re.compile(r"[.;,\n]|\b(?:but|however|although|though|except)\b", re.I)


def _any_of(words: Iterable[str]) -> str:
    """An alternation of ``words`` (longest first, spaces matching any whitespace), for whole-word patterns."""
    ordered = sorted({w.casefold() for w in words}, key=len, reverse=True)
    return "|".join(r"\s+".join(map(re.escape, w.split())) for w in ordered) or "(?!)"


class SymptomText:
    """Finds the symptom concepts free text documents as present."""

    def __init__(self, terms: Mapping[str, Iterable[str]], cues: Iterable[str], after: Iterable[str],
                 qualifiers: Iterable[str]) -> None:
        self._concept_of = {" ".join(t.casefold().split()): c for c, words in terms.items() for t in words}
        self._terms = re.compile(rf"\b({_any_of(self._concept_of)})\b", re.I)
        self._before = re.compile(rf"\b(?:{_any_of(cues)})\b", re.I)
        self._after = re.compile(rf"\s*[:=\-–]?\s*(?:{_any_of(after)})\b", re.I)
        self._qualified = re.compile(rf"\b(?:{_any_of(qualifiers)})\s+$", re.I)

    def concepts(self, text: str) -> list[str]:
        """The concepts ``text`` documents as present, each once, in order of first mention."""
        found: list[str] = []
        if not self._terms.search(text):
            return found
        for clause in _CLAUSES.split(text):
            for match in self._terms.finditer(clause):
                start, end = match.span()
                if (self._before.search(clause, 0, start) or self._after.match(clause, end)
                        or self._qualified.search(clause, 0, start)):
                    continue
                concept = self._concept_of[" ".join(match.group(1).casefold().split())]
                if concept not in found:
                    found.append(concept)
        return found
