"""The loss mask: exactly each assistant turn's words plus its end-of-turn token, under the chat template."""
from __future__ import annotations

from lorakit.data.tokenize import assistant_char_spans, assistant_spans

END = "<|im_end|>"


def supervised_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_single_turn_mask_is_answer_plus_end_token(tokenizer):
    msgs = [{"role": "user", "content": "红灯能走吗？"}, {"role": "assistant", "content": "不能，要停车等候。"}]
    ids, mask = assistant_spans(tokenizer, msgs)
    assert supervised_text(tokenizer, ids, mask) == "不能，要停车等候。" + END
    assert len(ids) == len(mask) and mask[-1] == 0  # the trailing newline after <|im_end|> is not trained
    # the mask is one contiguous block ending on the end-of-turn token
    first = mask.index(1)
    last = len(mask) - 1 - mask[::-1].index(1)
    assert all(mask[first:last + 1]) and ids[last] == tokenizer.convert_tokens_to_ids(END)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert tokenizer.decode(ids) == full


def test_multi_turn_with_system(tokenizer):
    msgs = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Can I drive after drinking?"},
            {"role": "assistant", "content": "No."},
            {"role": "user", "content": "为什么？"},
            {"role": "assistant", "content": "醉酒驾驶会受到严厉处罚。"}]
    ids, mask = assistant_spans(tokenizer, msgs)
    assert supervised_text(tokenizer, ids, mask) == "No." + END + "醉酒驾驶会受到严厉处罚。" + END
    ids2, mask2 = assistant_spans(tokenizer, msgs, last_turn_only=True)
    assert ids2 == ids
    assert supervised_text(tokenizer, ids2, mask2) == "醉酒驾驶会受到严厉处罚。" + END
    text, spans = assistant_char_spans(tokenizer, msgs)
    assert [text[s:e] for s, e in spans] == ["No." + END, "醉酒驾驶会受到严厉处罚。" + END]


def test_truncation(tokenizer):
    msgs = [{"role": "user", "content": "Stop at the red light. " * 5},
            {"role": "assistant", "content": "Wait for green before you go. " * 5}]
    ids, mask = assistant_spans(tokenizer, msgs)
    n_prompt = mask.index(1)
    cut_ids, cut_mask = assistant_spans(tokenizer, msgs, max_length=n_prompt + 3)
    assert cut_ids == ids[:n_prompt + 3] and sum(cut_mask) == 3
    p_ids, p_mask = assistant_spans(tokenizer, msgs, max_length=n_prompt)
    assert sum(p_mask) == 0  # the prompt fills the budget: nothing left to learn


def test_empty_answer_still_trains_end_token(tokenizer):
    ids, mask = assistant_spans(tokenizer, [{"role": "user", "content": "问"}, {"role": "assistant", "content": ""}])
    assert supervised_text(tokenizer, ids, mask) == END


def test_plain_text_record(tokenizer):
    ids, mask = assistant_spans(tokenizer, [{"role": "assistant", "content": "行人应当走人行横道。"}])
    assert all(mask) and tokenizer.decode(ids) == "行人应当走人行横道。" + END


def test_template_that_rewrites_history(tokenizer):
    # A Qwen3-like template that drops <think> blocks from earlier assistant turns.
    tmpl = ("{%- for m in messages %}{%- set c = m['content'] %}"
            "{%- if m['role'] == 'assistant' and not loop.last %}{%- set c = c.split('</think>')[-1] %}{%- endif %}"
            "{{ '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token=END,
                              pad_token="<|endoftext|>")
    tok.chat_template = tmpl
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>one"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "<think>y</think>two"}]
    ids, mask = assistant_spans(tok, msgs)
    assert supervised_text(tok, ids, mask) == "one" + END + "<think>y</think>two" + END


def test_boundary_lookup_matches_offsets(tokenizer, fixtures):
    """check counts tokens from span boundaries; it must agree with the full offsets on every record."""
    from lorakit.data.formats import parse_records
    from lorakit.data.tokenize import encoding_ranges, token_ranges

    recs = parse_records(fixtures / "seeded.jsonl").records + parse_records(fixtures / "alpaca.json").records
    for r in recs:
        text, spans = assistant_char_spans(tokenizer, r.messages())
        enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
        assert encoding_ranges(enc, spans, len(text)) == token_ranges([a for a, _ in enc.offsets], spans)
        ids, mask = assistant_spans(tokenizer, r.messages())
        assert ids == enc.ids and sum(mask) == sum(hi - lo for lo, hi in token_ranges([a for a, _ in enc.offsets], spans))


def test_fast_render_matches_apply_chat_template(tokenizer):
    from lorakit.data.tokenize import render
    msgs = [{"role": "system", "content": "系统"}, {"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]
    for k in range(1, 4):
        for gen in (False, True):
            assert render(tokenizer, msgs[:k], add_generation_prompt=gen) == \
                tokenizer.apply_chat_template(msgs[:k], tokenize=False, add_generation_prompt=gen)
