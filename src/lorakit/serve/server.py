"""An OpenAI-compatible HTTP server that serves one base model and several LoRA adapters by name.

`model` in a request picks the system: the base name or an adapter's name. Adapters share the base weights and are
switched per request, so N adapters cost one base in memory. Requests are served one at a time (one model).
With an index (``lorakit serve --index DIR``) every system also has a grounded twin, ``NAME+rag``: the last user
message is answered over the passages retrieved for it, and the response carries their evidence in a
``lorakit`` field (passages, citations and whether each was shown, unsupported figures) that OpenAI clients ignore.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    stream: bool = False


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


class Systems:
    """The loaded base model with its named adapters, and the switch between them."""

    def __init__(self, model: str, adapters: dict[str, str | Path], console=None, *, index=None, recipe=None,
                 k: int = 3, cite_shown: bool = True):
        from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
        from lorakit.models.load import AdapterSet, set_threads
        set_threads()
        path = resolve(model, console=console)
        self.base_name = model if "/" not in model else Path(model).name
        if self.base_name in adapters:
            from lorakit.errors import LorakitError
            raise LorakitError(f"an adapter is named '{self.base_name}', like the base model", field="adapter",
                               hint="Name it differently with name=path")
        self.precision = pick_precision()
        self.tokenizer = load_tokenizer(path)
        self.models = AdapterSet(load_model(path, self.precision), adapters)
        plain = [self.base_name] + self.models.names
        self.index, self.k, self.retriever, self.cite_shown = index, k, None, cite_shown
        if index is not None:
            from lorakit.rag.retrieve import Recipe, Retriever
            recipe = (recipe or Recipe()).resolved(index)
            lm = (self.models.base, self.tokenizer, self.precision) if recipe.needs_model else None
            self.retriever = Retriever(index, recipe, lm)
        self.names = plain + ([f"{n}+rag" for n in plain] if index is not None else [])
        self.lock = threading.Lock()

    def activate(self, name: str):
        """Return (model, context manager) for the named system (``NAME+rag`` uses NAME's weights)."""
        name = name[:-len("+rag")] if self.index is not None and name.endswith("+rag") else name
        return self.models.use(None if name == self.base_name else name)

    def ground(self, name: str, messages: list[dict], model, max_tokens: int):
        """(messages to generate from, passages shown or None): ``NAME+rag`` answers the last user turn over
        the passages retrieved for it (the prompt of `lorakit rag ask`); other systems get the messages as sent."""
        if self.index is None or not name.endswith("+rag") or messages[-1]["role"] != "user":
            return messages, None
        from lorakit.rag.answer import context_budget, grounded_prompt
        question = messages[-1]["content"]
        hits = self.retriever.search([question], self.k)[0]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        return grounded_prompt(self.tokenizer, question, hits, budget=context_budget(model, max_tokens),
                               system=system, history=messages[:-1])

    def evidence(self, messages: list[dict], text: str, grounded) -> dict | None:
        if grounded is None:
            return None
        from lorakit.rag.answer import checked_answer
        prompt, shown = grounded
        ev = checked_answer(self.index, messages[-1]["content"], text, shown, prompt).evidence()
        return {k: v for k, v in ev.items() if k not in ("question", "answer")}

    def starts(self, messages: list[dict], shown) -> list[str] | None:
        """How a grounded reply may begin (citing a passage shown, or saying none answers), or None."""
        if shown is None or not self.cite_shown:
            return None
        from lorakit.rag.answer import answer_starts
        return answer_starts(messages[-1]["content"], shown)


def build_app(systems: Systems, *, default_max_tokens: int = 256) -> FastAPI:
    app = FastAPI(title="lorakit server", description="OpenAI-compatible chat completions over LoRA adapters")

    @app.get("/health")
    def health():
        return {"status": "ok", "models": systems.names}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "lorakit",
                                            "created": 0} for n in systems.names]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        from lorakit.serve.chat import complete, stream_reply
        if req.model not in systems.names:
            return _error(404, f"model '{req.model}' is not served here; available: {', '.join(systems.names)}",
                          "model_not_found")
        messages = [m.model_dump() for m in req.messages]
        max_tokens = req.max_tokens or default_max_tokens
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        state: dict = {}

        def pieces():
            with systems.lock:
                model, ctx = systems.activate(req.model)
                with ctx:
                    prompt, shown = systems.ground(req.model, messages, model, max_tokens)
                    state["grounded"] = (prompt, shown) if shown is not None else None
                    yield from stream_reply(model, systems.tokenizer, prompt, precision=systems.precision,
                                            max_new_tokens=max_tokens, temperature=req.temperature,
                                            starts=systems.starts(messages, shown))

        def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        if req.stream:
            def events():
                yield chunk({"role": "assistant"})
                text = ""
                for piece in pieces():
                    if piece:
                        text += piece
                        yield chunk({"content": piece})
                ev = systems.evidence(messages, text.strip(), state.get("grounded"))
                yield chunk({}, "stop", {"lorakit": ev} if ev else None)
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")

        with systems.lock:
            model, ctx = systems.activate(req.model)
            with ctx:
                prompt, shown = systems.ground(req.model, messages, model, max_tokens)
                text, prompt_tokens, completion_tokens, finish = complete(
                    model, systems.tokenizer, prompt, precision=systems.precision, max_new_tokens=max_tokens,
                    temperature=req.temperature, starts=systems.starts(messages, shown))
        body = {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
        ev = systems.evidence(messages, text, (prompt, shown) if shown is not None else None)
        if ev:
            body["lorakit"] = ev
        return body

    return app


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """`name=path` or a bare path (named after its run folder)."""
    from lorakit.errors import LorakitError
    from lorakit.evaluate.compare import adapter_label
    out: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (adapter_label(Path(spec)), "", spec)
        if name in out:
            raise LorakitError(f"two adapters are named '{name}'", field="adapter", hint="Use name=path to rename one")
        out[name] = path
    return out
