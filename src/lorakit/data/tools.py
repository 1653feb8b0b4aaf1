"""Tool-calling conversations: LLaMA-Factory's ``function_call`` / ``observation`` turns and OpenAI's ``tool_calls`` /
``tool`` messages read into one form, and what makes such a record untrainable.

The canonical form is OpenAI's (what chat templates that support tools take): an assistant turn with
``tool_calls=[{"type": "function", "function": {"name": …, "arguments": {…}}}]`` and a ``tool`` turn with the
result as its content; the declared tools are a list of ``{"type": "function", "function": {name, description,
parameters}}`` on the conversation. A call whose arguments do not parse as JSON is kept as written (arguments a
string) so that `lorakit data check` can point at it; `tool_call_problem` says why it cannot be trained.
"""
from __future__ import annotations

import json
from typing import Any

from lorakit.errors import LorakitError


def _loads(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


def parse_tools(value: Any, where: str, path, line: int) -> list[dict] | None:
    """The ``tools`` field (a list, or a JSON string of one, as LLaMA-Factory stores it) in OpenAI form."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        parsed = _loads(value)
        if parsed is None:
            raise LorakitError("the tools declaration is not valid JSON", file=path, line=line, field=where,
                               hint="Give a JSON list of function schemas: [{\"name\": …, \"parameters\": {…}}]")
        value = parsed
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise LorakitError("expected a list of function schemas", file=path, line=line, field=where)
    out = []
    for t in value:
        fn = t.get("function") if t.get("type") == "function" and isinstance(t.get("function"), dict) else t
        if not isinstance(fn.get("name"), str):
            raise LorakitError("a declared tool has no 'name'", file=path, line=line, field=where)
        out.append({"type": "function", "function": fn})
    return out


def _call(obj: Any) -> dict:
    """One call in OpenAI form from {"name", "arguments"} or {"type": "function", "function": {…}}."""
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        parsed = _loads(args)
        args = parsed if isinstance(parsed, dict) else args
    call = {"type": "function", "function": {"name": fn.get("name"), "arguments": args}}
    if obj.get("id"):
        call["id"] = obj["id"]
    return call


def calls_from_text(value: str) -> list[dict]:
    """LLaMA-Factory's ``function_call`` value: a JSON call or list of calls. Text that is not JSON is kept as one
    call with no name and the text as its arguments, for `tool_call_problem` to report."""
    parsed = _loads(value)
    if isinstance(parsed, dict):
        parsed = [parsed]
    if isinstance(parsed, list) and parsed and all(isinstance(c, dict) for c in parsed):
        return [_call(c) for c in parsed]
    return [{"type": "function", "function": {"name": None, "arguments": value}}]


def calls_from_openai(value: Any, where: str, path, line: int) -> list[dict] | None:
    if value in (None, []):
        return None
    if not isinstance(value, list) or not all(isinstance(c, dict) for c in value):
        raise LorakitError("expected a list of tool calls", file=path, line=line, field=where)
    return [_call(c) for c in value]


def tool_call_problem(conv) -> str | None:
    """Why a conversation's tool calls cannot be trained: a call that is not JSON, or calls a tool not declared."""
    declared = {t["function"]["name"] for t in (conv.tools or [])}
    for k, t in enumerate(conv.turns):
        for call in t.tool_calls or []:
            fn = call.get("function", {})
            if fn.get("name") is None or isinstance(fn.get("arguments"), str):
                shown = str(fn.get("arguments"))[:60]
                return f"turn {k + 1}: the tool call does not parse as JSON with a name and arguments ({shown!r})"
            if fn["name"] not in declared:
                known = ", ".join(sorted(declared)) or "none"
                return f"turn {k + 1}: calls '{fn['name']}', which the record does not declare in tools (declared: {known})"
    return None


def template_supports_tools(tokenizer) -> bool:
    """Whether the chat template renders tool calls and tool results (else they would vanish from the text)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "tool_calls" in template and "tool" in template
