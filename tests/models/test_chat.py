"""Chat templates and EOS handling: the template fits the vocabulary and generation stops at the end of a turn."""
from __future__ import annotations

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.models import load_model, load_tokenizer
from lorakit.models.chat import (CHATML_TEMPLATE, PLAIN_TEMPLATE, end_of_turn_id, ensure_chat_template,
                                 ensure_pad_token, stop_ids)
from lorakit.models.load import Precision
from lorakit.models.presets import GEMMA_TEMPLATE

CONV = [{"role": "user", "content": "红灯能右转吗？"}, {"role": "assistant", "content": "不影响直行时可以。"}]


def make_tokenizer(specials: list[str], **named):
    """A small byte-level BPE tokenizer with the given special tokens and no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["user model assistant question answer 红灯 右转 直行"] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    extra = [s for s in specials if s not in named.values()]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    assert not fast.chat_template
    return fast


def test_chatml_vocab_gets_chatml(tiny_model):
    tok = load_tokenizer(tiny_model)
    tok.chat_template = None
    assert ensure_chat_template(tok) == "chatml"
    assert tok.chat_template == CHATML_TEMPLATE
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"


def test_gemma_vocab_gets_gemma():
    tok = make_tokenizer(["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                         bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert ensure_chat_template(tok) == "gemma"
    assert tok.chat_template == GEMMA_TEMPLATE
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n") and "<start_of_turn>model\n不影响直行时可以。<end_of_turn>" in text
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<end_of_turn>"
    assert stop_ids(tok) == [tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id]


def test_plain_vocab_gets_plain_markers_ending_in_eos():
    tok = make_tokenizer(["</s>"], eos_token="</s>")
    assert ensure_chat_template(tok) == "plain"
    assert tok.chat_template == PLAIN_TEMPLATE
    assert "### Answer:\n不影响直行时可以。</s>" in tok.apply_chat_template(CONV, tokenize=False)
    assert end_of_turn_id(tok) == tok.eos_token_id
    assert stop_ids(tok) == [tok.eos_token_id]
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id


def test_no_template_no_specials_no_eos_is_a_lorakit_error():
    tok = make_tokenizer(["<unk>"])
    with pytest.raises(LorakitError, match="no EOS token"):
        ensure_chat_template(tok)


def test_own_and_supplied_templates_win(tiny_model):
    tok = load_tokenizer(tiny_model)
    own = tok.chat_template
    assert ensure_chat_template(tok) == "own" and tok.chat_template == own
    assert ensure_chat_template(tok, PLAIN_TEMPLATE) == "supplied" and tok.chat_template == PLAIN_TEMPLATE


def test_template_without_end_marker_and_without_eos_is_a_lorakit_error():
    tok = make_tokenizer(["<unk>"])
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(LorakitError, match="never stop"):
        end_of_turn_id(tok)


def test_chatml_with_endoftext_eos_stops_on_both(tiny_model):
    """Qwen base models: EOS is <|endoftext|>, but the turn ends with <|im_end|>; generation must stop on either."""
    tok = load_tokenizer(tiny_model)
    tok.eos_token = "<|endoftext|>"
    im_end, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert end_of_turn_id(tok) == im_end
    assert stop_ids(tok) == [im_end, eot]


def test_generation_stops_at_the_end_of_turn_token(tiny_model):
    tok = load_tokenizer(tiny_model)
    model = load_model(tiny_model, Precision("cpu", "float32", None, "test"))
    stop = end_of_turn_id(tok)
    # Make the random model say its end-of-turn token after three words: a hook on the output head.
    state = {"step": 0}

    def push(_module, _inputs, logits):
        logits = logits.clone()
        logits[:, -1, :] -= 1e4 * torch.nn.functional.one_hot(torch.tensor(stop), logits.shape[-1])
        if state["step"] >= 3:
            logits[:, -1, stop] = 1e4
        state["step"] += 1
        return logits

    model.lm_head.register_forward_hook(push)
    prompt = tok.apply_chat_template(CONV[:1], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False, eos_token_id=stop_ids(tok),
                             pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert len(new) == 4 and new[-1] == stop and stop not in new[:-1]

    state["step"] = 0  # without the stop ids it runs on to max_new_tokens
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=[tok.pad_token_id],
                             pad_token_id=tok.pad_token_id)
    assert out.shape[1] - ids["input_ids"].shape[1] == 12
