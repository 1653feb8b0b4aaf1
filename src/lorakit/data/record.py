"""The canonical records every stage speaks: a conversation with optional system text and source metadata, and
the two preference kinds built from it (a prompt with a chosen and a rejected reply; a prompt with one reply
labelled desirable or not, for KTO). Tool-calling conversations are conversations whose assistant turns carry
``tool_calls`` and whose ``tool`` turns carry the results, with the declared ``tools`` on the conversation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Turn:
    role: str  # "user", "assistant" or "tool" ("system" only as Conversation.system)
    content: str
    # assistant turns that call tools: OpenAI form [{"type": "function", "function": {"name", "arguments"}}];
    # "arguments" is a dict when it parsed as JSON and the text as written otherwise (data check reports it)
    tool_calls: list[dict] | None = None

    def message(self) -> dict[str, Any]:
        m: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            m["tool_calls"] = self.tool_calls
        return m


@dataclass
class Conversation:
    """One training example. ``source`` keeps where it came from (document, article, file, line)."""

    turns: list[Turn]
    system: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. keywords for evaluation
    tools: list[dict] | None = None  # function schemas the conversation may call (OpenAI form)

    # --- views -----------------------------------------------------------------
    def messages(self, *, with_system: bool = True) -> list[dict[str, str]]:
        """OpenAI-style messages, the shape chat templates take."""
        out = [{"role": "system", "content": self.system}] if (with_system and self.system) else []
        out += [t.message() for t in self.turns]
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
        if self.tools:
            d["tools"] = self.tools
        if self.source:
            d["source"] = self.source
        d.update({k: v for k, v in self.meta.items() if k not in ("messages", "source")})
        return d

    @classmethod
    def from_messages(cls, messages: list[dict[str, Any]], **kw) -> "Conversation":
        system = None
        turns = []
        for m in messages:
            if m["role"] == "system" and not turns and system is None:
                system = m["content"]
            else:
                turns.append(Turn(m["role"], m["content"], m.get("tool_calls") or None))
        return cls(turns=turns, system=system, **kw)


def prompt_messages(system: str | None, prompt: list[Turn]) -> list[dict[str, Any]]:
    """The system text (if any) and the prompt turns as messages: what preference and KTO records are asked."""
    return ([{"role": "system", "content": system}] if system else []) + [t.message() for t in prompt]


@dataclass
class Preference:
    """A prompt (system + turns ending with a user turn) with a preferred and a dispreferred reply (DPO, ORPO,
    SimPO). ``chosen`` and ``rejected`` are the reply turns, usually one assistant turn each."""

    prompt: list[Turn]
    chosen: list[Turn]
    rejected: list[Turn]
    system: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None

    def prompt_messages(self) -> list[dict[str, Any]]:
        return prompt_messages(self.system, self.prompt)

    def conversation(self, which: str = "chosen") -> Conversation:
        """The prompt followed by one reply, as an SFT conversation (for lengths, masks and checks)."""
        return Conversation(turns=self.prompt + getattr(self, which), system=self.system, source=self.source,
                            tools=self.tools)

    def to_trl(self) -> dict[str, Any]:
        """TRL's conversational preference form, which DPOTrainer, ORPO and CPO tokenize with the chat template."""
        row: dict[str, Any] = {"prompt": self.prompt_messages(), "chosen": [t.message() for t in self.chosen],
                               "rejected": [t.message() for t in self.rejected]}
        if self.tools:
            row["tools"] = self.tools
        return row

    def text(self) -> str:
        return "\n".join(t.content for t in self.prompt + self.chosen + self.rejected)


@dataclass
class Feedback:
    """A prompt with one reply and whether that reply is desirable (KTO's unpaired form; LLaMA-Factory's kto_tag)."""

    prompt: list[Turn]
    completion: list[Turn]
    label: bool
    system: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict] | None = None

    def prompt_messages(self) -> list[dict[str, Any]]:
        return prompt_messages(self.system, self.prompt)

    def conversation(self) -> Conversation:
        return Conversation(turns=self.prompt + self.completion, system=self.system, source=self.source,
                            tools=self.tools)

    def to_trl(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt": self.prompt_messages(), "completion": [t.message() for t in self.completion],
                               "label": self.label}
        if self.tools:
            row["tools"] = self.tools
        return row

    def text(self) -> str:
        return "\n".join(t.content for t in self.prompt + self.completion)


def as_conversation(record) -> Conversation:
    """The conversation a record trains like: itself, or a preference/KTO record's prompt and (chosen) reply."""
    return record if isinstance(record, Conversation) else record.conversation()


def record_kind(record) -> str:
    """'sft', 'preference' or 'kto': what a record can train."""
    return "preference" if isinstance(record, Preference) else "kto" if isinstance(record, Feedback) else "sft"


def role_order_problem(conv: Conversation) -> str | None:
    """Why the turn order is unusable for chat training, or None if it is fine.

    Plain-text records (a single assistant turn with no user) are allowed: they are continued pre-training.
    """
    if not conv.turns:
        return "no turns"
    roles = [t.role for t in conv.turns]
    bad = [r for r in roles if r not in ("user", "assistant", "tool")]
    if bad:
        return f"unknown role '{bad[0]}' (expected user, assistant or tool; system only first)"
    if roles == ["assistant"]:
        return None
    if roles[0] != "user":
        return "the first turn must be a user turn"
    for k, (a, b) in enumerate(zip(roles, roles[1:])):
        calls = bool(conv.turns[k].tool_calls)
        if b == "tool" and not (a == "tool" or (a == "assistant" and calls)):
            return "a tool result must follow an assistant turn that calls a tool"
        if a == "assistant" and calls and b != "tool":
            return "an assistant turn that calls a tool must be followed by the tool's result"
        if a == "tool" and b not in ("tool", "assistant"):
            return "a tool result must be followed by the assistant's turn"
        if a == b and a != "tool":
            return f"two {a} turns in a row (turns must alternate user/assistant)"
    if roles[-1] != "assistant" or conv.turns[-1].tool_calls:
        return "the last turn must be an assistant turn (nothing to learn otherwise)"
    return None
