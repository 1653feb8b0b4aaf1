"""Fixtures for the data-stage tests: paths to the realistic sample files and the shared law texts."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LAWS = Path(__file__).resolve().parents[2].parent / "shared/data/laws"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def laws() -> Path:
    if not LAWS.exists():
        pytest.skip("../shared/data/laws is not beside the checkout")
    return LAWS


CHATML = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    """A few KB of Chinese and English written for these tests."""
    zh = ["机动车在路口遇到红灯时应当停车等候，绿灯亮起后再通行。",
          "驾驶人饮酒以后不能开车，醉酒驾驶会受到严厉处罚。",
          "行人横过马路应当走人行横道，注意左右来车。",
          "高速公路上发生故障时，要打开危险报警闪光灯并在车后放置警告标志。",
          "新手司机在实习期内上高速，需要有经验的驾驶人陪同。",
          "电动自行车上路要登记上牌，骑行时佩戴安全头盔。"]
    en = ["Stop at the red light and wait for green before you go.",
          "Never drive after drinking; drunk driving is punished severely.",
          "Pedestrians should use the zebra crossing and look both ways.",
          "Learner drivers need an experienced driver beside them on the motorway.",
          "Turn on the hazard lights and place a warning triangle behind a broken-down car."]
    return (zh + en) * 12


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer) -> Path:
    """The tiny tokenizer saved as a model folder (what `--model PATH` points at)."""
    import json
    out = tmp_path_factory.mktemp("tiny_tok")
    tokenizer.save_pretrained(out)
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return out

