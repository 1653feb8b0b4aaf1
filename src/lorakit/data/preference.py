"""Preference and KTO records: read from every shape people bring, written back in each, and checked.

Read (``fmt`` ``preference``; detected when a record has both ``chosen`` and ``rejected``):

* TRL's form with an explicit prompt: ``{"prompt", "chosen", "rejected"}``, each a string (plain) or a list of
  messages (conversational); TRL's implicit prompt: ``chosen`` and ``rejected`` whole conversations that share
  the prompt as their common beginning.
* LLaMA-Factory's ``ranking: true`` alpaca form: ``instruction``/``input``/``system``/``history`` and
  ``chosen``/``rejected`` strings (or ``output: [chosen, rejected]``), column names mapped by the entry.
* LLaMA-Factory's ``ranking: true`` sharegpt form: the prompt turns in ``conversations`` and ``chosen``/``rejected``
  as one turn object each (``{"from": "gpt", "value": …}``).

Read (``fmt`` ``kto``; detected when a record has a boolean ``label`` or a ``kto_tag`` field): TRL's unpaired form
``{"prompt", "completion", "label"}``, or an SFT record (messages, sharegpt or alpaca) whose last assistant turn is
the completion and whose ``kto_tag`` column (LLaMA-Factory; default ``label``) says if it is desirable.

Written: ``preference``/``kto`` (TRL's conversational form, what lorakit trains from), ``sharegpt`` and
``llamafactory`` (LLaMA-Factory's ranking / kto_tag forms), ``alpaca`` (ranking alpaca), ``messages`` (KTO only:
the conversation with its ``label``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from lorakit.data.record import Conversation, Feedback, Preference, Turn, record_kind
from lorakit.errors import LorakitError


# ============================================================================ reading
def _reply(value: Any, where: str, path: Path, line: int, cols: dict) -> list[Turn]:
    """A reply: a string, one turn object, or a list of messages (all assistant/tool turns)."""
    from lorakit.data.formats import _want_str, chat_turns
    if isinstance(value, str):
        return [Turn("assistant", value)]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        turns = [Turn(m["role"], m["content"], m.get("tool_calls")) for m in chat_turns(value, where, path, line, cols)]
        if any(t.role not in ("assistant", "tool") for t in turns):
            raise LorakitError("a reply holds only assistant (and tool) turns", file=path, line=line, field=where)
        return turns
    _want_str(value, where, path, line)
    return []


def _prompt(obj: dict, path: Path, line: int, cols: dict) -> tuple[str | None, list[Turn], str | None]:
    """(system, prompt turns, field that held them) for any of the shapes; None turns when there is no prompt."""
    from lorakit.data.formats import _history_turns, _want_str, chat_turns
    mk = cols["messages"] if cols["messages"] in obj else ("conversations" if "conversations" in obj else
                                                           "messages" if "messages" in obj else None)
    pk = cols["prompt"] if cols["prompt"] in obj else ("prompt" if "prompt" in obj else None)
    system = _want_str(obj.get(cols["system"]), cols["system"], path, line, optional=True)
    if mk is not None:
        msgs = chat_turns(obj[mk], mk, path, line, cols)
        field = mk
    elif pk is not None and isinstance(obj[pk], list):
        msgs = chat_turns(obj[pk], pk, path, line, cols)
        field = pk
    elif pk is not None:
        text = _want_str(obj[pk], pk, path, line)
        query = _want_str(obj.get(cols["query"]), cols["query"], path, line, optional=True)
        turns = _history_turns(obj.get(cols["history"]), cols["history"], path, line)
        return system or None, turns + [Turn("user", text + ("\n" + query if query else ""))], pk
    else:
        return system or None, [], None
    conv = Conversation.from_messages(msgs)
    if conv.system is not None and system is not None:
        raise LorakitError("the record has a system field and a system turn", file=path, line=line,
                           field=cols["system"])
    return conv.system or system or None, conv.turns, field


def _common(obj: dict, path: Path, line: int, cols: dict, used: set) -> dict:
    from lorakit.data.formats import ALPACA_INPUT, _source_of
    from lorakit.data.tools import parse_tools
    tools_key = cols.get("tools", "tools")
    query = obj.get(cols["query"])
    meta = {k: v for k, v in obj.items() if k not in used | {tools_key, "source", cols["system"], cols["history"],
                                                             cols["query"]}}
    if isinstance(query, str) and query:
        meta[ALPACA_INPUT] = query
    return {"source": _source_of(obj, path, line), "meta": meta,
            "tools": parse_tools(obj.get(tools_key), tools_key, path, line)}


def preference_record(obj: dict, path: Path, line: int, cols: dict, fmt: str = "preference") -> Preference:
    ck, rk, ok = cols["chosen"], cols["rejected"], cols["response"]
    if ck in obj and rk in obj:
        chosen_v, rejected_v = obj[ck], obj[rk]
    elif isinstance(obj.get(ok), list) and len(obj[ok]) == 2:  # alpaca ranking: output [chosen, rejected]
        chosen_v, rejected_v = obj[ok]
        ck = rk = ok
    else:
        missing = rk if ck in obj else ck
        raise LorakitError(f"missing field '{missing}'", file=path, line=line, field=missing,
                           hint=f"Preference records need '{ck}' and '{rk}' (and a prompt: 'prompt', "
                                f"'{cols['prompt']}' or a turn list)")
    system, prompt, pfield = _prompt(obj, path, line, cols)
    chosen = _reply(chosen_v, ck, path, line, cols) if not (pfield is None and isinstance(chosen_v, list)) else None
    if pfield is None:  # TRL's implicit prompt: the shared beginning of two whole conversations
        if not (isinstance(chosen_v, list) and isinstance(rejected_v, list)):
            raise LorakitError("no prompt: expected 'prompt' (or an instruction or turn list), or chosen and "
                               "rejected as whole conversations that begin with it", file=path, line=line, field=ck)
        from lorakit.data.formats import chat_turns
        a = Conversation.from_messages(chat_turns(chosen_v, ck, path, line, cols))
        b = Conversation.from_messages(chat_turns(rejected_v, rk, path, line, cols))
        n = 0
        while n < min(len(a.turns), len(b.turns)) and a.turns[n] == b.turns[n]:
            n += 1
        while n and a.turns[n - 1].role != "user":
            n -= 1
        if n == 0 or a.system != b.system:
            raise LorakitError("chosen and rejected do not begin with the same prompt (a user turn)", file=path,
                               line=line, field=ck)
        system, prompt, chosen, rejected = a.system, a.turns[:n], a.turns[n:], b.turns[n:]
    else:
        rejected = _reply(rejected_v, rk, path, line, cols)
    if not prompt or prompt[-1].role not in ("user", "tool"):
        raise LorakitError("the prompt must end with a user turn", file=path, line=line, field=pfield or ck)
    used = {ck, rk, pfield or ""}
    return Preference(prompt=prompt, chosen=chosen, rejected=rejected, system=system,
                      **_common(obj, path, line, cols, used))


def feedback_record(obj: dict, path: Path, line: int, cols: dict, fmt: str = "kto") -> Feedback:
    from lorakit.data.formats import _alpaca_record, _chat_record, _columns_for
    tag = cols["kto_tag"] if cols["kto_tag"] in obj else ("kto_tag" if "kto_tag" in obj else cols["kto_tag"])
    label = obj.get(tag)
    if not isinstance(label, bool):
        raise LorakitError(f"expected true or false (is the reply desirable?), got {label!r}", file=path, line=line,
                           field=tag, hint="KTO records need a boolean label")
    if "completion" in obj:  # TRL's unpaired form
        system, prompt, pfield = _prompt(obj, path, line, cols)
        completion = _reply(obj["completion"], "completion", path, line, cols)
        used = {tag, "completion", pfield or ""}
        if not prompt:
            raise LorakitError("missing field 'prompt'", file=path, line=line, field="prompt")
        return Feedback(prompt=prompt, completion=completion, label=label, system=system,
                        **_common(obj, path, line, cols, used))
    inner = {k: v for k, v in obj.items() if k != tag}
    has_turns = cols["messages"] in obj or "conversations" in obj or "messages" in obj
    conv = _chat_record(inner, path, line, _columns_for("messages", cols), "messages") if has_turns else \
        _alpaca_record(inner, path, line, _columns_for("alpaca", {k: v for k, v in cols.items()
                                                                  if k in ("prompt", "query", "response", "system",
                                                                           "history")}), "alpaca")
    k = len(conv.turns) - 1  # the reply judged is the last assistant turn; everything before it is the prompt
    if k < 1 or conv.turns[k].role != "assistant" or conv.turns[k].tool_calls:
        raise LorakitError("a KTO record ends with the reply being judged (an assistant turn after a prompt)",
                           file=path, line=line, field=cols["messages"])
    return Feedback(prompt=conv.turns[:k], completion=conv.turns[k:], label=label, system=conv.system,
                    source=conv.source, meta=conv.meta, tools=conv.tools)


def kind_of(records: list) -> str:
    """The one kind ('sft', 'preference' or 'kto') of a list of records (an empty list is 'sft')."""
    kinds = {record_kind(r) for r in records}
    if len(kinds) > 1:
        raise LorakitError("the records mix kinds (" + ", ".join(sorted(kinds)) + "); write each kind to its own file")
    return kinds.pop() if kinds else "sft"


def unpaired(records: list[Preference]) -> list[Feedback]:
    """Each pair as two KTO examples: the chosen reply desirable, the rejected one not (what TRL does too)."""
    out = []
    for r in records:
        for reply, label in ((r.chosen, True), (r.rejected, False)):
            out.append(Feedback(prompt=r.prompt, completion=reply, label=label, system=r.system, source=r.source,
                                meta=r.meta, tools=r.tools))
    return out


# ============================================================================ writing
def _trl_row(rec, i: int = 0) -> dict:
    from lorakit.data.formats import _with_extras
    return _with_extras(rec.to_trl(), rec)


def _single(turns: list[Turn], i: int, which: str, fmt: str) -> Turn:
    if len(turns) != 1 or turns[0].role != "assistant":
        raise LorakitError(f"record {i}: the {which} reply has {len(turns)} turns, which {fmt} cannot hold",
                           hint="Write it as preference (TRL's form) instead")
    return turns[0]


def _sharegpt_pref(rec: Preference, i: int = 0) -> dict:
    from lorakit.data.formats import _with_extras, sharegpt_row, sharegpt_turn
    row = sharegpt_row(Conversation(turns=rec.prompt, system=rec.system, tools=rec.tools), i)
    row["chosen"] = sharegpt_turn(_single(rec.chosen, i, "chosen", "sharegpt"))
    row["rejected"] = sharegpt_turn(_single(rec.rejected, i, "rejected", "sharegpt"))
    return _with_extras(row, rec)


def _alpaca_pref(rec: Preference, i: int = 0) -> dict:
    from lorakit.data.formats import ALPACA_INPUT, _chat_pairs, _with_extras, split_input
    stub = Conversation(turns=rec.prompt + [Turn("assistant", "")])
    pairs = _chat_pairs(stub, i, "alpaca")
    instruction, query = split_input(pairs[-1][0], rec.meta)
    row: dict[str, Any] = {"instruction": instruction, "input": query,
                           "chosen": _single(rec.chosen, i, "chosen", "alpaca").content,
                           "rejected": _single(rec.rejected, i, "rejected", "alpaca").content}
    if rec.system:
        row["system"] = rec.system
    if len(pairs) > 1:
        row["history"] = [list(p) for p in pairs[:-1]]
    return _with_extras(row, rec, skip=(ALPACA_INPUT,))


def row_writer(kind: str, fmt: str) -> Callable[[Any, int], dict]:
    """The row function for ``kind`` records in ``fmt``, or a clear refusal."""
    from lorakit.data.formats import messages_row, sharegpt_row

    def kto_as(conv_row):
        def write(rec: Feedback, i: int = 0) -> dict:
            row = conv_row(Conversation(turns=rec.prompt + rec.completion, system=rec.system, tools=rec.tools,
                                        source=rec.source, meta=rec.meta), i)
            row["label"] = rec.label
            return row
        return write

    table = {("preference", "preference"): _trl_row, ("preference", "sharegpt"): _sharegpt_pref,
             ("preference", "alpaca"): _alpaca_pref,
             ("kto", "kto"): _trl_row, ("kto", "messages"): kto_as(messages_row),
             ("kto", "sharegpt"): kto_as(sharegpt_row)}
    if (kind, fmt) in table:
        return table[(kind, fmt)]
    if kind == "sft":
        raise LorakitError(f"these are SFT conversations, which {fmt} cannot hold (it is for "
                           f"{'chosen/rejected pairs' if fmt == 'preference' else 'labelled replies'})",
                           field="to", hint="`lorakit data pairs` makes preference pairs from Q&A records")
    can = sorted(f for k, f in table if k == kind) + ["llamafactory"]
    raise LorakitError(f"these are {kind} records ({'prompt, chosen and rejected' if kind == 'preference' else 'a reply and its label'}), "
                       f"which {fmt} cannot hold without dropping part of each", field="to",
                       hint="Write them as " + ", ".join(can))


# ============================================================================ checks
def preference_findings(rec) -> list[tuple[str, str, str | None]]:
    """(code, message, field) for what makes a preference record teach nothing or the wrong thing."""
    out: list[tuple[str, str, str | None]] = []
    if isinstance(rec, Preference):
        chosen = "\n".join(t.content for t in rec.chosen).strip()
        rejected = "\n".join(t.content for t in rec.rejected).strip()
        calls = lambda turns: [t.tool_calls for t in turns]  # noqa: E731
        if not rec.chosen or (not chosen and not any(calls(rec.chosen))):
            out.append(("empty", "the chosen reply is empty", "chosen"))
        if not rec.rejected or (not rejected and not any(calls(rec.rejected))):
            out.append(("empty", "the rejected reply is empty", "rejected"))
        elif chosen == rejected and calls(rec.chosen) == calls(rec.rejected):
            out.append(("same_pair", "chosen and rejected are the same reply (nothing to prefer)", "rejected"))
    elif isinstance(rec, Feedback):
        if not "".join(t.content for t in rec.completion).strip() and not any(t.tool_calls for t in rec.completion):
            out.append(("empty", "the reply being judged is empty", "completion"))
    return out


def label_balance(records: list) -> dict[str, int] | None:
    """{'desirable': n, 'undesirable': m} for KTO records (None for other kinds)."""
    if not records or not isinstance(records[0], Feedback):
        return None
    c = Counter(r.label for r in records if isinstance(r, Feedback))
    return {"desirable": c.get(True, 0), "undesirable": c.get(False, 0)}
