"""Chat templates and end-of-turn tokens: the two things that decide whether a fine-tuned model ever stops."""
from __future__ import annotations

from lorakit.errors import LorakitError

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

# For a vocabulary without chat special tokens: plain markers, and the tokenizer's EOS ends each answer.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ '### Question:\n' + message['content'] + '\n\n' }}"
    "{%- else %}{{ '### Answer:\n' + message['content'] + eos_token + '\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Answer:\n' }}{%- endif %}"
)

_PROBE = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "ANSWER_7f3"}]


def ensure_chat_template(tokenizer, template: str | None = None) -> str:
    """Give a tokenizer without a chat template one that fits its vocabulary; return which one it has."""
    if template:
        tokenizer.chat_template = template
        return "supplied"
    if getattr(tokenizer, "chat_template", None):
        return "own"
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        from lorakit.models.presets import GEMMA_TEMPLATE
        tokenizer.chat_template = GEMMA_TEMPLATE
        return "gemma"
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        tokenizer.chat_template = CHATML_TEMPLATE
        return "chatml"
    if tokenizer.eos_token is None:
        raise LorakitError("the tokenizer has no chat template, no chat special tokens and no EOS token, so nothing "
                           "could mark where an answer ends", field="chat_template",
                           hint="Use a model whose tokenizer has an EOS token, or supply a chat template")
    tokenizer.chat_template = PLAIN_TEMPLATE
    return "plain"


def ensure_pad_token(tokenizer) -> None:
    """Batches need a pad id; padded positions are never trained, so reusing EOS is safe."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def end_of_turn_id(tokenizer) -> int:
    """The first special token the template puts right after an assistant's words: what generation must stop on.

    Training supervises this token (completion masks include it), so a fine-tuned model learns to emit it.
    """
    text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    tail = text[text.index("ANSWER_7f3") + len("ANSWER_7f3"):]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    # Added tokens flagged special count too: <|im_end|> need not be listed among the named special tokens.
    special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    for i in ids:
        if i in special:
            return i
    if tokenizer.eos_token_id is None:
        raise LorakitError("the chat template puts no special token after an answer and there is no EOS token, so "
                           "generation could never stop", field="chat_template",
                           hint="Use a template that closes each turn with a special token")
    return tokenizer.eos_token_id


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end generation: the end-of-turn token plus the tokenizer's EOS."""
    ids = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
