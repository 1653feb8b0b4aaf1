"""An OpenAI-compatible HTTP server that serves one base model and several LoRA adapters by name.

`model` in a request picks the system: the base name or an adapter's name. Adapters share the base weights and are
switched per request, so N adapters cost one base in memory. Concurrent requests wait in a bounded queue and
those that share a system are generated together in one batch (``lorakit.serve.scheduler``); the limits the
server promises (API key, prompt and answer length caps, queue bound, per-request timeout) are ``Limits``.
With an index (``lorakit serve --index DIR``) every system also has a grounded twin, ``NAME+rag``: the last user
message is answered over the passages retrieved for it, and the response carries their evidence in a
``lorakit`` field (passages, citations and whether each was shown, unsupported figures) that OpenAI clients ignore.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from lorakit.serve.scheduler import Job, Output, QueueFull, Scheduler

API_KEY_ENV = "LORAKIT_API_KEY"


@dataclass
class Limits:
    """What the server promises to hold to, whoever calls it."""
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /v1/* when set
    max_prompt_tokens: int = 4096  # longer prompts are refused (400) before they reach the model
    max_tokens: int = 1024  # the largest max_tokens a request may ask for (400 above it)
    default_max_tokens: int = 256
    max_queue: int = 32  # waiting requests; one more is refused with 429 and Retry-After
    max_batch: int = 8  # requests of one system generated together
    timeout_s: float = 120.0  # from arrival: waiting longer is 504; generating longer cuts the answer

    @property
    def max_prompt_chars(self) -> int:
        """Refused without tokenizing: no tokenizer packs 8 characters into every token of a prompt."""
        return self.max_prompt_tokens * 8


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(BaseModel):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = Field(1, ge=1, le=1)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])[:4]


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions


def _error(status: int, message: str, kind: str = "invalid_request_error", *, param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:
    """An error shaped like OpenAI's, so that its clients raise the matching exception with this message."""
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


class PromptTooLong(Exception):
    pass


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
            # The LoRA layers sit inside the base modules and `ground` runs under the system's `activate`, so the
            # LM levers (rewrite, rerank) run on the answering system's weights, as in `rag ask` and `rag eval`.
            lm = (self.models.base, self.tokenizer, self.precision) if recipe.needs_model else None
            self.retriever = Retriever(index, recipe, lm)
        self.names = plain + ([f"{n}+rag" for n in plain] if index is not None else [])
        from lorakit.models.chat import stop_ids
        self.stop_ids = set(stop_ids(self.tokenizer))
        self.context = int(getattr(self.models.base.config, "max_position_embeddings", 0) or 0) or None

    def weights(self, name: str) -> str:
        """Which weights a system runs on (``NAME+rag`` runs on NAME's): requests with the same may share a batch."""
        return name[:-len("+rag")] if self.index is not None and name.endswith("+rag") else name

    def activate(self, name: str):
        """Return (model, context manager) for the named system (``NAME+rag`` uses NAME's weights)."""
        name = self.weights(name)
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

    def prompt_ids(self, job: Job, model, limits: Limits) -> tuple[list[int], tuple | None]:
        """The job's prompt tokens (grounded for ``NAME+rag``) and its grounding; PromptTooLong past the caps."""
        grounded = None
        if job.messages is not None:
            prompt, shown = self.ground(job.system, job.messages, model, job.max_tokens)
            grounded = (prompt, shown) if shown is not None else None
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(job.prompt)["input_ids"]
        room = (self.context - job.max_tokens) if self.context else None
        if len(ids) > limits.max_prompt_tokens or (room is not None and len(ids) > room):
            cap = min(limits.max_prompt_tokens, room) if room is not None else limits.max_prompt_tokens
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; this server takes at most {cap} prompt tokens "
                                f"(max_prompt_tokens {limits.max_prompt_tokens}; the model's context of "
                                f"{self.context} less max_tokens {job.max_tokens})")
        return ids, grounded

    def run_batch(self, jobs: list[Job], limits: Limits) -> None:
        """Generate for jobs that share weights and sampling, in one left-padded batch (the scheduler's engine)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from lorakit.evaluate.generate import autocast_ctx, start_processors
        model, ctx = self.activate(jobs[0].system)
        with ctx:
            rows = []
            for job in jobs:
                try:
                    ids, grounded = self.prompt_ids(job, model, limits)
                except PromptTooLong as e:
                    job.emit(("error", 400, str(e), "context_length_exceeded"))
                    continue
                decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
                rows.append((ids, Output(job, decode, self.stop_ids, len(ids)), grounded))
            if not rows:
                return
            outs = [o for _, o, _ in rows]

            class Rows(BaseStreamer):
                """generate() hands every step's new token of each row here; the first call is the prompt."""
                prompt_seen = False

                def put(self, value):
                    if not self.prompt_seen:
                        self.prompt_seen = True
                        return
                    for out, token in zip(outs, value.reshape(len(outs), -1)[:, -1].tolist()):
                        out.add(token)

                def end(self):
                    pass

            class Done(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.tensor([o.done for o in outs], dtype=torch.bool, device=input_ids.device)

            pad = self.tokenizer.pad_token_id
            width = max(len(ids) for ids, _, _ in rows)
            device = next(model.parameters()).device
            input_ids = torch.tensor([[pad] * (width - len(i)) + i for i, _, _ in rows], device=device)
            attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _, _ in rows], device=device)
            temperature = jobs[0].temperature
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            # grounded rows must begin by citing a passage shown (AllowedStarts); plain rows are left alone
            sampling.update(start_processors(self.tokenizer, [self.starts(o.job.messages, g[1] if g else None)
                                                              for _, o, g in rows], width))
            with torch.no_grad(), autocast_ctx(model, self.precision):
                model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                               max_new_tokens=max(o.job.max_tokens for o in outs), eos_token_id=sorted(self.stop_ids),
                               streamer=Rows(), stopping_criteria=StoppingCriteriaList([Done()]), **sampling)
            for _, out, grounded in rows:
                ev = self.evidence(out.job.messages, out.text.strip(), grounded) if grounded else None
                out.close(extra={"lorakit": ev} if ev else None)


def build_app(systems, *, limits: Limits | None = None, default_max_tokens: int | None = None) -> FastAPI:
    """The HTTP face of ``systems`` (transformers ``Systems`` or the llama.cpp engine's ``GGUFSystem``)."""
    limits = limits or Limits()
    if default_max_tokens is not None:
        limits.default_max_tokens = default_max_tokens
    scheduler = Scheduler(lambda jobs: systems.run_batch(jobs, limits), max_queue=limits.max_queue,
                          max_batch=limits.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.stop()

    app = FastAPI(title="lorakit server", description="OpenAI-compatible chat completions over LoRA adapters",
                  lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"invalid request: {where or 'body'}: {first.get('msg', 'not valid')}", param=where or None)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if limits.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {limits.api_key}".encode()):
                return _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' (the key the server "
                                   f"was started with, --api-key or ${API_KEY_ENV})", code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "models": systems.names, "queue": scheduler.stats()}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "lorakit",
                                            "created": 0} for n in systems.names]}

    def admit(req: Sampling, *, messages: list[dict] | None, prompt: str | None):
        """A queued job and the queue its events arrive on, or the error response that refuses it."""
        if req.model not in systems.names:
            return _error(404, f"model '{req.model}' is not served here; available: {', '.join(systems.names)}",
                          param="model", code="model_not_found")
        if prompt is not None and getattr(systems, "index", None) is not None and req.model.endswith("+rag"):
            return _error(400, "grounded (+rag) systems answer chat messages only; use /v1/chat/completions",
                          param="model")
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            return _error(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                          param="max_tokens")
        chars = sum(len(m["content"]) for m in messages) if messages is not None else len(prompt or "")
        if chars > limits.max_prompt_chars:
            return _error(400, f"the prompt has {chars} characters; this server takes at most "
                               f"{limits.max_prompt_tokens} prompt tokens (max_prompt_tokens), and a prompt this "
                               f"long cannot fit", param="messages" if messages is not None else "prompt",
                          code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(system=req.model, key=(getattr(systems, "weights", lambda n: n)(req.model), req.temperature),
                  max_tokens=max_tokens, temperature=req.temperature, stop=req.stops(),
                  deadline=time.monotonic() + limits.timeout_s,
                  emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), messages=messages, prompt=prompt)
        try:
            scheduler.submit(job)
        except QueueFull as e:
            return _error(429, f"{e}: {limits.max_queue} requests are waiting already", "rate_limit_error",
                          code="queue_full", headers={"Retry-After": str(e.retry_after)})
        return job, events

    async def next_event(job: Job, events: asyncio.Queue) -> tuple:
        try:
            return await asyncio.wait_for(events.get(), max(0.0, job.deadline - time.monotonic()) + 30)
        except asyncio.TimeoutError:
            job.cancelled.set()
            return ("error", 504, "the request timed out")

    def error_of(ev: tuple) -> JSONResponse:
        return _error(ev[1], ev[2], "server_error" if ev[1] >= 500 else "invalid_request_error",
                      code=ev[3] if len(ev) > 3 else None)

    async def respond(req: Sampling, job: Job, events: asyncio.Queue, kind: str):
        """Non-streaming: the whole answer in one body; streaming: server-sent events as OpenAI sends them."""
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        first = await next_event(job, events)
        if first[0] == "error":
            return error_of(first)

        def usage(res: dict) -> dict:
            return {"prompt_tokens": res["prompt_tokens"], "completion_tokens": res["completion_tokens"],
                    "total_tokens": res["prompt_tokens"] + res["completion_tokens"]}

        def extra(res: dict) -> dict:
            out = {"lorakit": res["lorakit"]} if res.get("lorakit") else {}
            if res.get("timed_out"):
                out.setdefault("lorakit", {})["timed_out"] = True
            return out

        if not req.stream:
            text, ev = "", first
            while ev[0] == "text":
                text += ev[1]
                ev = await next_event(job, events)
            if ev[0] == "error":
                return error_of(ev)
            res = ev[1]
            choice = ({"index": 0, "message": {"role": "assistant", "content": text.strip()},
                       "finish_reason": res["finish_reason"]} if kind == "chat" else
                      {"index": 0, "text": text, "finish_reason": res["finish_reason"], "logprobs": None})
            return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                    "created": created, "model": req.model, "choices": [choice], "usage": usage(res), **extra(res)}

        def chunk(delta: dict | str | None, finish: str | None = None, more: dict | None = None) -> str:
            if kind == "chat":
                choices = [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if delta is not None else []
                body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                        "choices": choices, **(more or {})}
            else:
                choices = [{"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}] \
                    if delta is not None else []
                body = {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                        "choices": choices, **(more or {})}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def stream():
            ev = first
            started = False
            try:
                if kind == "chat":
                    yield chunk({"role": "assistant"})
                while ev[0] == "text":
                    piece = ev[1].lstrip() if kind == "chat" and not started else ev[1]
                    if piece:
                        started = True
                        yield chunk({"content": piece} if kind == "chat" else piece)
                    ev = await next_event(job, events)
                if ev[0] == "error":
                    yield f"data: {json.dumps({'error': {'message': ev[2], 'type': 'server_error'}})}\n\n"
                else:
                    res = ev[1]
                    yield chunk({} if kind == "chat" else "", res["finish_reason"], extra(res))
                    if (req.stream_options or {}).get("include_usage"):
                        yield chunk(None, more={"usage": usage(res)})
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()  # a client that went away stops its row of the batch

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        admitted = admit(req, messages=[m.model_dump() for m in req.messages], prompt=None)
        if isinstance(admitted, JSONResponse):
            return admitted
        return await respond(req, *admitted, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        admitted = admit(req, messages=None, prompt=req.prompt)
        if isinstance(admitted, JSONResponse):
            return admitted
        return await respond(req, *admitted, "text")

    return app


class Served:
    """uvicorn serving ``app`` in a thread of this process on a free loopback port until ``stop`` (tests,
    benchmarks, notebooks)."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    limit_concurrency=500))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=15)


def api_key(given: str | None) -> str | None:
    """The key from --api-key, else from $LORAKIT_API_KEY, else none (an open server on loopback)."""
    return given or os.environ.get(API_KEY_ENV) or None


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
