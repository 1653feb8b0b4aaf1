"""llama.cpp through llama-cpp-python (the optional extra ``lorakit[llamacpp]``): an exported GGUF run the way
llama.cpp, LM Studio and Ollama run it, with the chat template and tokenizer stored in the file; and llama.cpp's
own quantiser (``llama_model_quantize``, what ``llama-quantize`` runs), which writes the k-quants and chooses the
type of every tensor the way the GGUFs people download were made.

llama-cpp-python compiles llama.cpp when pip installs it (no wheel on PyPI), so it is an extra, not a dependency.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lorakit.errors import LorakitError

INSTALL_HINT = ("pip install 'lorakit[llamacpp]' (llama-cpp-python==0.3.36; pip compiles llama.cpp, which took "
                "about 9 minutes on 2 busy cores here)")


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


# lorakit's GGUF type name → llama.cpp's file type (llama_ftype): the "mostly" type; llama.cpp picks each tensor's.
QUANT_TYPES = {"q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M", "q5_0": "MOSTLY_Q5_0",
               "q4_k_m": "MOSTLY_Q4_K_M", "q4_0": "MOSTLY_Q4_0"}


def quantize(src: str | Path, out: str | Path, dtype: str) -> str:
    """Quantise the f16 (or f32) GGUF ``src`` to ``dtype`` with llama.cpp's quantiser; returns who wrote it.

    llama.cpp keeps 1-D tensors in F32, chooses higher-precision types for the tensors that need them (the output
    head, half the attn_v/ffn_down of a *_M type) and falls back to a block format where a row is no multiple of
    the 256 values a k-quant block holds (the 0.5B default's 896-wide rows: Q4_K becomes Q5_0, Q6_K Q8_0)."""
    import ctypes

    from lorakit.io import atomic_path
    if not available():
        raise LorakitError(f"GGUF type '{dtype}' is written by llama.cpp's quantiser and llama-cpp-python is not "
                           f"installed", field="gguf", hint=INSTALL_HINT)
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr
    if dtype not in QUANT_TYPES:
        raise LorakitError(f"llama.cpp's quantiser does not write '{dtype}' for lorakit", field="gguf",
                           hint="Use " + ", ".join(QUANT_TYPES))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + QUANT_TYPES[dtype])
    params.nthread = threads()
    out = Path(out)
    with atomic_path(out) as tmp, suppress_stdout_stderr(disable=False):  # it logs every tensor on stderr
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise LorakitError(f"llama.cpp's quantiser failed on this GGUF (return code {rc}) writing {dtype}",
                               file=src)
    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, llama_model_quantize) from {Path(src).name}"


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def has_amx() -> bool:
    """Whether this CPU has Intel AMX (Sapphire Rapids and later), read from /proc/cpuinfo's flags."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


@contextlib.contextmanager
def _plain_cpu_buffers():
    """On AMX CPUs, load with llama.cpp's extra CPU buffer types off (``use_extra_bufts = false``).

    There llama.cpp repacks quantised weights into its AMX buffer, and the first matrix product then segfaults
    (seen here on a 2-core AMX Xeon for every quantised type, Q8_0 and Q4_K_M alike, while F16 ran; the upstream
    report is ggml-org/llama.cpp#20824, still open). The export parity figures on that machine were measured with
    the plain CPU kernels. llama-cpp-python has no argument for the field, so the default parameters it starts
    from are wrapped for the one load."""
    if not has_amx():
        yield
        return
    import llama_cpp.llama as module
    original = module.llama_cpp.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params
    module.llama_cpp.llama_model_default_params = defaults
    try:
        yield
    finally:
        module.llama_cpp.llama_model_default_params = original


class LlamaCpp:
    """One GGUF loaded in llama.cpp. ``logits=True`` keeps every position's logits (teacher-forced comparison)."""

    def __init__(self, gguf: str | Path, *, n_ctx: int = 2048, logits: bool = False):
        if not available():
            raise LorakitError("llama.cpp is needed for this and llama-cpp-python is not installed", hint=INSTALL_HINT)
        from llama_cpp import Llama
        gguf = Path(gguf)
        try:
            with _plain_cpu_buffers():
                self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads(), n_threads_batch=threads(),
                                 logits_all=logits, verbose=False, seed=0)
        except ValueError as e:  # llama-cpp-python reports every load failure as ValueError
            raise LorakitError(f"llama.cpp could not load this GGUF ({e})", file=gguf) from None
        self.path = gguf
        self.n_ctx = n_ctx
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        ids = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
        self.stop_ids = ids | {self.llm.token_eos()}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat template stored in the GGUF, rendered the way llama-cpp-python renders it, then tokenized."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        if not self.template:
            raise LorakitError("this GGUF carries no chat template, so a chat cannot be prompted as it was trained",
                               file=self.path, hint="Export it with lorakit export, which writes the template in")
        meta = self.llm.metadata
        token = lambda key: self.llm.detokenize([int(meta[key])], special=True).decode("utf-8", "replace") \
            if key in meta else ""  # noqa: E731
        fmt = Jinja2ChatFormatter(template=self.template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                  bos_token=token("tokenizer.ggml.bos_token_id"))
        return self.tokenize(fmt(messages=messages).prompt)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def tokens(self, ids: list[int], *, temperature: float = 0.0):
        """Generated token ids after ``ids``, one at a time, without end (the caller stops on stop_ids)."""
        return self.llm.generate(ids, temp=temperature, top_k=1 if temperature == 0 else 40, top_p=1.0, min_p=0.0,
                                 repeat_penalty=1.0, reset=True)

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


class GGUFSystem:
    """One GGUF served by llama.cpp behind lorakit's server (the same limits, queue, usage and stop handling as the
    transformers engine). llama-cpp-python decodes one sequence at a time, so jobs run one after another."""

    index = None

    def __init__(self, gguf: str | Path, *, n_ctx: int = 4096):
        self.engine = LlamaCpp(gguf, n_ctx=n_ctx)
        self.base_name = Path(gguf).stem
        self.names = [self.base_name]
        self.context = n_ctx
        self.engine.prompt_ids([{"role": "user", "content": "ok"}])  # no template: refuse now, not per request

    def weights(self, name: str) -> str:
        return name

    def run_batch(self, jobs, limits) -> None:
        from lorakit.serve.scheduler import Output
        for job in jobs:
            if job.messages is not None:
                ids = self.engine.prompt_ids(job.messages)
            else:
                ids = self.engine.llm.tokenize(job.prompt.encode("utf-8"), add_bos=True, special=False)
            cap = min(limits.max_prompt_tokens, self.context - job.max_tokens)
            if len(ids) > cap:
                job.emit(("error", 400, f"the prompt has {len(ids)} tokens; this server takes at most {cap} prompt "
                                        f"tokens (max_prompt_tokens {limits.max_prompt_tokens}; the context of "
                                        f"{self.context} less max_tokens {job.max_tokens})", "context_length_exceeded"))
                continue
            out = Output(job, self.engine.decode, self.engine.stop_ids, len(ids))
            for token in self.engine.tokens(ids, temperature=job.temperature):
                out.add(token)
                if out.done:
                    break
            out.close()
