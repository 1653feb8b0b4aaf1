"""The canonical record every stage speaks: a conversation with optional system text and source metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass
class Turn:
    role: str  # "user" or "assistant" ("system" only as Conversation.system)
    content: str


@dataclass
class Conversation:
    """One training example. ``source`` keeps where it came from (document, article, file, line)."""

    turns: list[Turn]
    system: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. keywords for evaluation

    # --- views -----------------------------------------------------------------
    def messages(self, *, with_system: bool = True) -> list[dict[str, str]]:
        """OpenAI-style messages, the shape chat templates take."""
        out = [{"role": "system", "content": self.system}] if (with_system and self.system) else []
        out += [{"role": t.role, "content": t.content} for t in self.turns]
        return out

    @property
    def prompt(self) -> str:
        """The last user message (what a model is asked at evaluation time)."""
        users = [t.content for t in self.turns if t.role == "user"]
        return users[-1] if users else ""

    @property
    def answer(self) -> str:
        """The last assistant message (the reference answer)."""
        answers = [t.content for t in self.turns if t.role == "assistant"]
        return answers[-1] if answers else ""

    def prompt_messages(self) -> list[dict[str, str]]:
        """Messages up to (not including) the last assistant turn: what generation starts from."""
        msgs = self.messages()
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        return msgs

    def text(self) -> str:
        """All text of the record joined (for dedup, language checks and plain-text training)."""
        parts = ([self.system] if self.system else []) + [t.content for t in self.turns]
        return "\n".join(parts)

    # --- canonical JSON ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"messages": self.messages()}
        if self.source:
            d["source"] = self.source
        d.update({k: v for k, v in self.meta.items() if k not in ("messages", "source")})
        return d

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]], **kw) -> "Conversation":
        system = None
        turns = []
        for m in messages:
            if m["role"] == "system" and not turns and system is None:
                system = m["content"]
            else:
                turns.append(Turn(m["role"], m["content"]))
        return cls(turns=turns, system=system, **kw)


def role_order_problem(conv: Conversation) -> str | None:
    """Why the turn order is unusable for chat training, or None if it is fine.

    Plain-text records (a single assistant turn with no user) are allowed: they are continued pre-training.
    """
    if not conv.turns:
        return "no turns"
    roles = [t.role for t in conv.turns]
    bad = [r for r in roles if r not in ("user", "assistant")]
    if bad:
        return f"unknown role '{bad[0]}' (expected user or assistant; system only first)"
    if roles == ["assistant"]:
        return None
    if roles[0] != "user":
        return "the first turn must be a user turn"
    for a, b in zip(roles, roles[1:]):
        if a == b:
            return f"two {a} turns in a row (turns must alternate user/assistant)"
    if roles[-1] != "assistant":
        return "the last turn must be an assistant turn (nothing to learn otherwise)"
    return None
