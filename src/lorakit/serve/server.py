"""An OpenAI-compatible HTTP server that serves one base model and several LoRA adapters by name.

`model` in a request picks the system: the base name or an adapter's name. Adapters share the base weights and are
switched per request, so N adapters cost one base in memory. Requests are served one at a time (one model).
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

    def __init__(self, model: str, adapters: dict[str, str | Path], console=None):
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
        self.names = [self.base_name] + self.models.names
        self.lock = threading.Lock()

    def activate(self, name: str):
        """Return (model, context manager) for the named system."""
        return self.models.use(None if name == self.base_name else name)


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

        def pieces():
            with systems.lock:
                model, ctx = systems.activate(req.model)
                with ctx:
                    yield from stream_reply(model, systems.tokenizer, messages, precision=systems.precision,
                                            max_new_tokens=max_tokens, temperature=req.temperature)

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        if req.stream:
            def events():
                yield chunk({"role": "assistant"})
                for piece in pieces():
                    if piece:
                        yield chunk({"content": piece})
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")

        with systems.lock:
            model, ctx = systems.activate(req.model)
            with ctx:
                text, prompt_tokens, completion_tokens, finish = complete(
                    model, systems.tokenizer, messages, precision=systems.precision, max_new_tokens=max_tokens,
                    temperature=req.temperature)
        return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

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
