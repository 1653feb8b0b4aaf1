"""Interactive chat in the terminal with token streaming: the quickest way to feel what an adapter changed."""
from __future__ import annotations

import threading
from pathlib import Path

from rich.console import Console


def load_chat_model(model: str, adapter: str | Path | None, console: Console):
    from lorakit.models import load_model, load_tokenizer, pick_precision, resolve
    from lorakit.models.load import set_threads
    set_threads()
    path = resolve(model, console=console)
    precision = pick_precision()
    return load_model(path, precision, adapter=adapter), load_tokenizer(path), precision


def prepare(model, tokenizer, messages: list[dict], *, max_new_tokens: int, temperature: float = 0.0,
            starts: list[str] | None = None):
    """Prompt tensors on the model's device and the generate() arguments every reply path uses; ``starts``: the
    reply must begin with one of them (`lorakit.evaluate.generate.AllowedStarts`)."""
    from lorakit.evaluate.generate import start_processors
    from lorakit.models.chat import stop_ids
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_ids(tokenizer),
                  pad_token_id=tokenizer.pad_token_id, do_sample=temperature > 0)
    if temperature > 0:
        kwargs["temperature"] = temperature
    kwargs.update(start_processors(tokenizer, [starts] if starts else None, enc["input_ids"].shape[1]))
    return enc, kwargs


def stream_reply(model, tokenizer, messages: list[dict], *, precision=None, max_new_tokens: int = 256,
                 temperature: float = 0.0, result: dict | None = None, starts: list[str] | None = None):
    """Yield the reply's text piece by piece as it is generated (generation runs in a worker thread).

    ``result``, when given, receives the prompt length and the generated ids once the reply is complete.
    """
    import torch
    from transformers import TextIteratorStreamer

    from lorakit.evaluate.generate import autocast_ctx
    enc, kwargs = prepare(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature,
                          starts=starts)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    def work():
        with torch.no_grad(), autocast_ctx(model, precision):
            ids = model.generate(**enc, **kwargs, streamer=streamer)
        if result is not None:
            result["prompt_tokens"] = enc["input_ids"].shape[1]
            result["ids"] = ids[0, enc["input_ids"].shape[1]:].tolist()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


def complete(model, tokenizer, messages: list[dict], *, precision=None, max_new_tokens: int = 256,
             temperature: float = 0.0, starts: list[str] | None = None) -> tuple[str, int, int, str]:
    """One whole reply: (text, prompt tokens, completion tokens, finish reason "stop" or "length")."""
    import torch

    from lorakit.evaluate.generate import autocast_ctx
    enc, kwargs = prepare(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature,
                          starts=starts)
    stops = kwargs["eos_token_id"]
    with torch.no_grad(), autocast_ctx(model, precision):
        out = model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:].tolist()
    finish = "stop" if out and out[-1] in stops else "length"
    n_completion = len(out)
    while out and out[-1] in stops + [tokenizer.pad_token_id]:
        out.pop()
    return tokenizer.decode(out, skip_special_tokens=True).strip(), enc["input_ids"].shape[1], n_completion, finish


def chat_loop(model: str, adapter: str | Path | None, *, system: str | None, max_new_tokens: int,
              temperature: float, console: Console, index=None, recipe=None, k: int = 3, max_chars: int = 600,
              on_answer=None, cite_shown: bool = True) -> None:
    """The terminal chat. With ``index`` every question is answered over the passages retrieved for it (the
    prompt of `lorakit rag ask`, citations held to them unless not ``cite_shown``), and ``on_answer(Answer)``
    shows its evidence after the reply."""
    m, tok, precision = load_chat_model(model, adapter, console)
    retriever = budget = None
    if index is not None:
        from lorakit.rag.answer import context_budget
        from lorakit.rag.retrieve import Recipe, Retriever
        recipe = recipe or Recipe()
        retriever = Retriever(index, recipe, (m, tok, precision) if recipe.needs_model else None)
        budget = context_budget(m, max_new_tokens)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a question; /reset clears the history, /exit or Ctrl-D quits.[/]")
    while True:
        try:
            text = console.input("[bold cyan]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            continue
        prompt = history + [{"role": "user", "content": text}]
        shown, starts = [], None
        if retriever is not None:
            from lorakit.rag.answer import answer_starts, grounded_prompt
            hits = retriever.search([text], k)[0]
            prompt, shown = grounded_prompt(tok, text, hits, budget=budget, max_chars=max_chars, system=system,
                                            history=history)
            starts = answer_starts(text, shown) if cite_shown else None
        console.print("[bold green]model>[/] ", end="")
        reply = ""
        for piece in stream_reply(m, tok, prompt, precision=precision, max_new_tokens=max_new_tokens,
                                  temperature=temperature, starts=starts):
            reply += piece
            console.print(piece, end="", highlight=False, markup=False)
        console.print()
        if retriever is not None and on_answer is not None:
            from lorakit.rag.answer import checked_answer
            on_answer(checked_answer(index, text, reply.strip(), shown, prompt))
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.strip()}]
