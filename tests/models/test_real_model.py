"""The real default model: resolve (pulling it on a fresh machine), load, and two LoRA steps on Chinese Q&A."""
from __future__ import annotations

import math
import time

import pytest
import torch

from lorakit.models import load_model, load_tokenizer, resolve
from lorakit.models.chat import end_of_turn_id, stop_ids
from lorakit.models.load import Precision, set_threads
from lorakit.models.presets import DEFAULT_PRESET, is_pulled, model_dir

pytestmark = pytest.mark.real_model

QA = [
    [{"role": "user", "content": "饮酒后驾驶机动车会受到什么处罚？"},
     {"role": "assistant", "content": "驾驶证暂扣半年，另交一千到两千元罚款。"}],
    [{"role": "user", "content": "闯红灯一次扣几分？"},
     {"role": "assistant", "content": "驾驶机动车违反道路交通信号灯通行的，一次记6分。"}],
]


@pytest.fixture
def real_model_dir(default_model):
    """The default preset, pulled into the real cache home (conftest) and resolved there, as a user would."""
    assert resolve(DEFAULT_PRESET) == default_model == model_dir(DEFAULT_PRESET) and is_pulled(DEFAULT_PRESET)
    return default_model


def test_real_model_template_and_end_of_turn(real_model_dir):
    tok = load_tokenizer(real_model_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end and stop_ids(tok)[0] == im_end
    text = tok.apply_chat_template(QA[0], tokenize=False)
    assert "<|im_start|>assistant\n驾驶证暂扣半年" in text


def test_real_model_two_lora_steps(real_model_dir):
    from peft import LoraConfig, get_peft_model

    from lorakit.data.tokenize import assistant_spans

    t0 = time.perf_counter()
    set_threads()
    torch.manual_seed(0)
    tok = load_tokenizer(real_model_dir)
    model = load_model(real_model_dir, Precision("cpu", "float32", None, "test"), trainable=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    assert 0 < trainable < 0.02 * total

    # Labels from the same loss mask training uses: the answer and its <|im_end|>, nothing of the prompt.
    rows = [assistant_spans(tok, conv) for conv in QA]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for ids, mask in rows:
        trained = [i for i, m in zip(ids, mask) if m]
        assert trained[-1] == im_end and sum(mask) < len(ids)
    width = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)] + [-100] * (width - len(ids))
                           for ids, mask in rows])

    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(2):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[0] < 10  # an instruct model already predicts these answers reasonably
    after = dict(model.named_parameters())
    changed = [n for n, before in lora.items() if not torch.equal(before, after[n].detach())]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert time.perf_counter() - t0 < 120
