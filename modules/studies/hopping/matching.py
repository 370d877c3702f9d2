"""Answer and entity matching for study 3, as the paper's code scores generations, plus one stricter
rule of ours.

The paper counts an answer correct when any of its aliases occurs anywhere in the continuation
(:func:`mentions`), which also accepts "Parisian" for Paris or an answer named in passing. We report
that rule for fidelity and :func:`first_entity_match` beside it: the continuation must *start* with
the entity. :func:`classify_description` is the paper's entity-description Patchscope classifier.
"""
from __future__ import annotations

from typing import Mapping, Sequence

ARTICLES = ("the ", "a ", "an ")
OTHER = "other"  # the class of a description that names none of the entities


class AnswerInPromptError(ValueError):
    """A prompt gives its own answer away; the message is one line."""


def answer_aliases(label: str, aliases: Sequence[str]) -> list[str]:
    """The paper's answer set: the label plus every alias longer than one character (a one-letter
    alias would match almost any text as a substring)."""
    return [label, *(a for a in aliases if len(a) > 1)]


def _normalised(generation: str) -> str:
    return generation.replace("\n", " ").lower()


def mentions(generation: str, aliases: Sequence[str]) -> bool:
    """The paper's rule: the continuation (prompt already stripped), newlines as spaces, contains an
    alias as a case-insensitive substring. Empty aliases are ignored (they would match anything)."""
    text = _normalised(generation)
    return any(alias.lower() in text for alias in aliases if alias)


def _strip_article(text: str) -> str:
    lowered = text.lower()
    for article in ARTICLES:
        if lowered.startswith(article):
            return text[len(article):].lstrip()
    return text


def first_entity_match(generation: str, aliases: Sequence[str]) -> bool:
    """Our stricter rule: after leading whitespace and an optional article ("the", "a", "an"), the
    continuation starts with an alias (case-insensitive) that ends at a non-alphanumeric character
    or at the end of the text, so "Parisian" does not name Paris."""
    text = _strip_article(generation.replace("\n", " ").lstrip()).lower()
    for alias in aliases:
        alias = alias.strip().lower()
        if alias and text.startswith(alias):
            rest = text[len(alias):]
            if not rest or not rest[0].isalnum():
                return True
    return False


def description_patterns(alias: str) -> tuple[str, ...]:
    """The strings that make a Patchscope description name ``alias`` (the paper's five forms)."""
    return (f": {alias} ", f": {alias},", f": {alias}.", f": {alias}:", f"{alias}: ")


def classify_description(generation: str, aliases_by_class: Mapping[str, Sequence[str]]) -> str:
    """The paper's entity-description classifier: the first class (in the mapping's order, e1, e2,
    e3) with an alias in one of :func:`description_patterns`, case-insensitively; else "other"."""
    text = generation.lower()
    for name, aliases in aliases_by_class.items():
        for alias in aliases:
            if alias and any(pattern in text for pattern in description_patterns(alias.lower())):
                return name
    return OTHER


def check_answer_not_in_prompt(prompt: str, aliases: Sequence[str], where: str) -> None:
    """Refuse a prompt that contains one of its answer's aliases (lower-case substring): the model
    could copy the answer instead of recalling it, and the substring rule would score the echo."""
    lowered = prompt.lower()
    for alias in aliases:
        if alias and alias.lower() in lowered:
            raise AnswerInPromptError(f"{where}: the answer alias {alias!r} occurs in the prompt {prompt!r}")
