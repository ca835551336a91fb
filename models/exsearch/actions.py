"""The action format an EXSEARCH agent's language model emits: one action per step, one line each.

    Think: <free-text reasoning>
    Search: <query>
    Record: <evidence sentence> [doc:<id>]
    Answer: <answer>

`parse_step` turns one step of model output into an `Action` or raises `ActionParseError` saying what is
wrong (unknown keyword, empty payload, a Record without exactly one doc citation, several actions in one
step). Keywords are matched case-insensitively; surrounding whitespace and blank lines are ignored.
Pure Python, no dependencies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

THINK, SEARCH, RECORD, ANSWER = "think", "search", "record", "answer"
KINDS = (THINK, SEARCH, RECORD, ANSWER)
KEYWORDS = {kind: kind.capitalize() for kind in KINDS}  # think -> "Think"

_HEAD = re.compile(r"^\s*([A-Za-z][A-Za-z _-]*?)\s*:\s*(.*)$", re.S)
# another action keyword later in the same step ("Search: x Answer: yes", or a second line "Answer: yes")
_INNER = re.compile(r"(?:^|\s|\n)(" + "|".join(KEYWORDS.values()) + r")\s*:", re.I)
_CITATION = re.compile(r"\[\s*doc\s*:\s*([^\]\s]+)\s*\]", re.I)
_ANY_BRACKET_DOC = re.compile(r"\[\s*doc\s*:?[^\]]*\]", re.I)


class ActionParseError(ValueError):
    """A step of model output is not exactly one well-formed action."""


@dataclass(frozen=True)
class Action:
    kind: str  # one of KINDS
    text: str  # the payload: thought, query, evidence sentence (without the citation) or answer
    doc_id: str | None = None  # the cited document, Record only

    def render(self) -> str:
        """The canonical one-line form, which parse_step reads back to an equal Action."""
        line = f"{KEYWORDS[self.kind]}: {self.text}"
        return f"{line} [doc:{self.doc_id}]" if self.kind == RECORD else line


def parse_step(text: str) -> Action:
    """Parse one step of model output into an Action; ActionParseError says what is malformed."""
    if text is None or not text.strip():
        raise ActionParseError("empty step: expected one line 'Think: ...', 'Search: ...', "
                               "'Record: ... [doc:<id>]' or 'Answer: ...'")
    body = "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())
    m = _HEAD.match(body)
    if not m:
        raise ActionParseError(f"no action keyword in {_clip(body)!r}: a step starts with one of "
                               f"{', '.join(k + ':' for k in KEYWORDS.values())}")
    keyword, payload = m.group(1).strip(), m.group(2).strip()
    kind = keyword.lower()
    if kind not in KINDS:
        raise ActionParseError(f"unknown action keyword {keyword!r}; expected one of "
                               f"{', '.join(KEYWORDS.values())}")
    inner = _INNER.search(payload)
    if inner:
        raise ActionParseError(f"multiple actions in one step: {KEYWORDS[kind]} is followed by "
                               f"{inner.group(1).capitalize()}: (emit one action per step)")
    if "\n" in payload:
        payload = " ".join(payload.split("\n"))  # a wrapped single action: join its lines
    if kind == RECORD:
        cites = _CITATION.findall(payload)
        if not cites:
            hint = " (malformed citation)" if _ANY_BRACKET_DOC.search(payload) else ""
            raise ActionParseError(f"Record without a doc citation{hint}: write 'Record: <evidence> [doc:<id>]'")
        if len(set(cites)) > 1:
            raise ActionParseError(f"Record cites {len(set(cites))} documents ({', '.join(sorted(set(cites)))}); "
                                   "cite exactly one")
        evidence = _CITATION.sub(" ", payload)
        evidence = " ".join(evidence.split()).strip()
        if not evidence:
            raise ActionParseError("empty Record: the evidence sentence before the [doc:<id>] citation is missing")
        return Action(RECORD, evidence, cites[0])
    if not payload:
        raise ActionParseError(f"empty {KEYWORDS[kind]} payload: write '{KEYWORDS[kind]}: <text>'")
    if kind == SEARCH and _CITATION.search(payload):
        payload = " ".join(_CITATION.sub(" ", payload).split())  # a stray citation in a query means nothing
        if not payload:
            raise ActionParseError("empty Search payload: write 'Search: <query>'")
    return Action(kind, payload)


def _clip(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[:n] + "..."
