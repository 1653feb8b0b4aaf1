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


def prepare(model, tokenizer, messages: list[dict], *, max_new_tokens: int, temperature: float = 0.0):
    """Prompt tensors on the model's device and the generate() arguments every reply path uses."""
    from lorakit.models.chat import stop_ids
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=stop_ids(tokenizer),
                  pad_token_id=tokenizer.pad_token_id, do_sample=temperature > 0)
    if temperature > 0:
        kwargs["temperature"] = temperature
    return enc, kwargs


def stream_reply(model, tokenizer, messages: list[dict], *, precision=None, max_new_tokens: int = 256,
                 temperature: float = 0.0, result: dict | None = None):
    """Yield the reply's text piece by piece as it is generated (generation runs in a worker thread).

    ``result``, when given, receives the prompt length and the generated ids once the reply is complete.
    """
    import torch
    from transformers import TextIteratorStreamer

    from lorakit.evaluate.generate import autocast_ctx
    enc, kwargs = prepare(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature)
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
             temperature: float = 0.0) -> tuple[str, int, int, str]:
    """One whole reply: (text, prompt tokens, completion tokens, finish reason "stop" or "length")."""
    import torch

    from lorakit.evaluate.generate import autocast_ctx
    enc, kwargs = prepare(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature)
    stops = kwargs["eos_token_id"]
    with torch.no_grad(), autocast_ctx(model, precision):
        out = model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:].tolist()
    finish = "stop" if out and out[-1] in stops else "length"
    n_completion = len(out)
    while out and out[-1] in stops + [tokenizer.pad_token_id]:
        out.pop()
    return tokenizer.decode(out, skip_special_tokens=True).strip(), enc["input_ids"].shape[1], n_completion, finish


def chat_loop(model: str, adapter: str | Path | None, *, system: str | None, max_new_tokens: int,
              temperature: float, console: Console) -> None:
    m, tok, precision = load_chat_model(model, adapter, console)
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
        history.append({"role": "user", "content": text})
        console.print("[bold green]model>[/] ", end="")
        reply = ""
        for piece in stream_reply(m, tok, history, precision=precision, max_new_tokens=max_new_tokens,
                                  temperature=temperature):
            reply += piece
            console.print(piece, end="", highlight=False, markup=False)
        console.print()
        history.append({"role": "assistant", "content": reply.strip()})
