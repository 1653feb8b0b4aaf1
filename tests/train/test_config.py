import pytest

from lorakit import config as C
from lorakit.config import TrainConfig
from lorakit.errors import LorakitError


def test_unknown_key_names_key_and_allowed(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data: a.jsonl\nlora:\n  rank: 8\n", encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        C.build(TrainConfig, f, {})
    msg = e.value.render()
    assert "lora.rank" in msg and "alpha" in msg and "run.yaml" in msg


def test_wrong_type_and_choice():
    with pytest.raises(LorakitError) as e:
        C.build(TrainConfig, None, {"data": "x", "epochs": "many"})
    assert "'epochs'" in e.value.render()
    with pytest.raises(LorakitError) as e:
        C.build(TrainConfig, None, {"data": "x", "scheduler": "zigzag"})
    assert "cosine" in e.value.render()


def test_missing_data_is_named():
    with pytest.raises(LorakitError) as e:
        C.build(TrainConfig, None, {})
    assert "'data' is required" in e.value.render()


def test_flags_override_file(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data: a.jsonl\nepochs: 3\nlora:\n  r: 8\n  alpha: 16\n", encoding="utf-8")
    over = C.parse_overrides(["--epochs", "1", "--lora.r=32", "--packing", "--no-padding-free", "--name", "x"])
    cfg = C.build(TrainConfig, f, over)
    assert cfg.epochs == 1 and cfg.lora.r == 32 and cfg.lora.alpha == 16 and cfg.packing and not cfg.padding_free
    assert cfg.name == "x"


def test_bad_yaml_names_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("data: a.jsonl\nepochs: [1,\n", encoding="utf-8")
    with pytest.raises(LorakitError) as e:
        C.build(TrainConfig, f, {})
    assert "run.yaml:" in e.value.render()


def test_dump_round_trips(tmp_path):
    cfg = TrainConfig(data="a.jsonl", lora={"targets": ["q_proj", "v_proj"]})
    f = tmp_path / "c.yaml"
    f.write_text(C.dump(cfg), encoding="utf-8")
    assert C.build(TrainConfig, f, {}) == cfg
