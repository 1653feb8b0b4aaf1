"""llama.cpp through llama-cpp-python (the optional extra ``lorakit[llamacpp]``): an exported GGUF run the way
llama.cpp, LM Studio and Ollama run it, with the chat template and tokenizer stored in the file.

llama-cpp-python compiles llama.cpp when pip installs it (no wheel on PyPI), so it is an extra, not a dependency.
"""
from __future__ import annotations

import os
from pathlib import Path

from lorakit.errors import LorakitError

INSTALL_HINT = ("pip install 'lorakit[llamacpp]' (llama-cpp-python==0.3.36; pip compiles llama.cpp, which took "
                "about 9 minutes on 2 busy cores here)")


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LlamaCpp:
    """One GGUF loaded in llama.cpp. ``logits=True`` keeps every position's logits (teacher-forced comparison)."""

    def __init__(self, gguf: str | Path, *, n_ctx: int = 2048, logits: bool = False):
        if not available():
            raise LorakitError("llama.cpp is needed for this and llama-cpp-python is not installed", hint=INSTALL_HINT)
        from llama_cpp import Llama
        gguf = Path(gguf)
        try:
            self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads(), n_threads_batch=threads(),
                             logits_all=logits, verbose=False, seed=0)
        except ValueError as e:  # llama-cpp-python reports every load failure as ValueError
            raise LorakitError(f"llama.cpp could not load this GGUF ({e})", file=gguf) from None
        self.path = gguf

    def logits(self, ids: list[int], positions: list[int] | None = None):
        """Next-token logits at ``positions`` (all when None) after evaluating ``ids`` from an empty context."""
        import numpy as np
        self.llm.reset()
        self.llm.eval(ids)
        scores = np.asarray(self.llm.scores[:len(ids)], dtype=np.float32)
        return scores if positions is None else scores[positions]

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's split of already-templated text (special tokens parsed, no BOS added)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def chat(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0, stop=None, stream=False):
        """An OpenAI-shaped chat completion, prompted through the chat template inside the GGUF."""
        return self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=temperature,
                                               top_k=1 if temperature == 0 else 40, repeat_penalty=1.0,
                                               stop=stop or [], stream=stream, seed=0)

    def answers(self, prompts: list[list[dict]], max_new_tokens: int) -> tuple[list[str], list[bool]]:
        texts, stopped = [], []
        for messages in prompts:
            out = self.chat(messages, max_tokens=max_new_tokens)
            choice = out["choices"][0]
            texts.append((choice["message"]["content"] or "").strip())
            stopped.append(choice["finish_reason"] == "stop")
        return texts, stopped

    def close(self) -> None:
        self.llm.close()
