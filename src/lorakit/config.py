"""Validated run configuration: one YAML file per run, command-line flags override it, unknown keys are errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.errors import LorakitError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(Strict):
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.0, ge=0, lt=1, description="0 is fastest (PEFT skips a copy of the input)")
    targets: list[str] | Literal["all-linear"] = Field("all-linear", description="module names or 'all-linear'")
    dora: bool = False
    rslora: bool = False


class ReplaySettings(Strict):
    """General records mixed into the domain data so the adapter keeps the base's behaviour outside the domain."""
    data: str = Field(..., description="replay records, e.g. from `lorakit data replay --model BASE --n N`")
    ratio: float = Field(0.2, gt=0, le=10, description="replay records per domain training record (0.2: one in "
                                                       "five; all of the file when it holds fewer)")


STAGES = ("sft", "dpo", "orpo", "kto", "simpo")
# loss types TRL 1.16 implements for each objective (ORPO and SimPO have one loss each)
LOSS_TYPES = {
    "dpo": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
            "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
    "kto": ("kto", "apo_zero_unpaired"),
}
# learning rate when the config gives none: preference objectives move a model that already answers, and the
# usual LoRA settings for them (LLaMA-Factory's examples, TRL's docs) are one to two orders below SFT's
DEFAULT_LR = {"sft": 2e-4, "dpo": 5e-5, "orpo": 5e-5, "kto": 5e-5, "simpo": 5e-5}


class PreferenceSettings(Strict):
    """Settings of the preference objectives (stage dpo, orpo, kto, simpo); ignored by sft."""

    beta: float | None = Field(None, gt=0, description="how far the policy may move from the reference (DPO, KTO: "
                                                        "β of the log-ratio; ORPO: λ of the odds-ratio term; SimPO: "
                                                        "reward scale). Default 0.1; SimPO 2.0 as in its paper")
    loss_type: str | None = Field(None, description="dpo: sigmoid (default), hinge, ipo, robust, …; kto: kto "
                                                    "(default) or apo_zero_unpaired")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin γ")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="DPO robust/EXO: share of flipped labels")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of desirable replies")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of undesirable replies")


class FastSettings(Strict):
    """The training fast path (lorakit.train.fast); unset = automatic for the device."""
    fused_loss: bool | None = Field(None, description="LM head + cross-entropy in chunks, no full logits "
                                                      "(Liger on CUDA, torch elsewhere; default on with CUDA)")
    kernels: bool | None = Field(None, description="Liger RMSNorm/RoPE/SwiGLU (default on with CUDA + liger-kernel)")
    fused_lora: bool | None = Field(None, description="LoRA in the activations' dtype, no per-op casts (default on "
                                                      "with CUDA and on the CPU)")
    varlen: bool | None = Field(None, description="padding-free rows through varlen flash attention (default on "
                                                  "with CUDA and torch >= 2.10; on the CPU one flash call per "
                                                  "example for rows over 512 tokens)")
    loader_workers: int | None = Field(None, ge=0, le=16, description="processes that collate batches while the "
                                                                       "model trains (default 0: measured slower)")
    lora_cache: bool | None = Field(None, description="fused LoRA keeps compute-dtype copies of A and s·B, made "
                                                      "again after each optimiser step (default on with fused_lora)")
    async_logs: bool | None = Field(None, description="a logging step's numbers are copied off the GPU without "
                                                      "waiting and logged one step later (default on with one CUDA "
                                                      "process)")
    compile: bool | None = Field(None, description="torch.compile each decoder layer (default off: see README)")


class TrainConfig(Strict):
    """Everything one training run needs. Defaults are the CPU-friendly ones `doctor` recommends."""

    model: str = Field("qwen2.5-coder-0.5b-instruct", description="preset name, HF folder or .gguf file")
    data: str = Field(..., description="training data file (any format of `lorakit data`)")
    eval_data: str | None = None
    eval_ratio: float = Field(0.0, ge=0, lt=1, description="hold out this share of `data` when no eval_data")
    system_prompt: str | None = None
    replay: ReplaySettings | None = None
    runs_dir: str = "runs"
    name: str | None = None

    stage: Literal["sft", "dpo", "orpo", "kto", "simpo"] = Field(
        "sft", description="training objective: sft, or a preference objective on pairs (dpo, orpo, simpo) or on "
                           "labelled replies (kto)")
    adapter: str | None = Field(None, description="start from this LoRA adapter (an SFT run folder or adapter "
                                                  "folder) instead of a new one; DPO/KTO then use it as reference")
    pref: PreferenceSettings = Field(default_factory=PreferenceSettings)
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    fast: FastSettings = Field(default_factory=FastSettings)

    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(4, ge=1, description="micro-batch per device")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    packing: bool = Field(False, description="pack examples into max_length rows (block-diagonal attention)")
    padding_free: bool | None = Field(None, description="concatenate each batch into one row without padding "
                                                         "(default: on for CPU/MPS; on CUDA only with flash attention, "
                                                         "since SDPA then needs a dense block mask)")
    completion_only: bool = Field(True, description="train only on assistant turns (+ end-of-turn token)")
    train_turns: Literal["all", "last"] = Field("all", description="which assistant turns are trained")
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    eval_steps: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(1, ge=1)
    seed: int = 42
    tensorboard: bool = False

    @field_validator("data", "eval_data")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not str(v).strip():
            raise ValueError("must be a file path, not empty")
        return v

    @model_validator(mode="before")
    @classmethod
    def _stage_learning_rate(cls, raw):
        if isinstance(raw, dict) and "learning_rate" not in raw and raw.get("stage") in DEFAULT_LR:
            raw = {**raw, "learning_rate": DEFAULT_LR[raw["stage"]]}
        return raw

    @model_validator(mode="after")
    def _stage_settings(self):
        lt = self.pref.loss_type
        if lt is not None:
            allowed = LOSS_TYPES.get(self.stage)
            if allowed is None:
                raise ValueError(f"pref.loss_type does not apply to stage {self.stage} (it has one loss); "
                                 "loss types exist for dpo and kto")
            if lt not in allowed:
                raise ValueError(f"pref.loss_type '{lt}' is not a {self.stage} loss (one of: {', '.join(allowed)})")
        if self.adapter is not None and self.method == "full":
            raise ValueError("adapter continues a LoRA adapter, which method full does not train")
        return self

    def beta(self) -> float:
        """pref.beta, or the stage's default (0.1; SimPO 2.0)."""
        return self.pref.beta if self.pref.beta is not None else (2.0 if self.stage == "simpo" else 0.1)


def _field_help(model: type[BaseModel], loc: tuple) -> str:
    """The allowed keys (for an unknown key) or the field's own description."""
    cls = model
    for part in loc[:-1]:
        f = cls.model_fields.get(str(part))
        ann = getattr(f, "annotation", None) if f else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
    return ", ".join(cls.model_fields)


def validation_error(e: ValidationError, source: str, model: type[BaseModel]) -> LorakitError:
    lines = []
    for err in e.errors()[:5]:
        key = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (allowed here: {_field_help(model, err['loc'])})")
        elif err["type"] == "missing":
            lines.append(f"'{key}' is required")
        elif not key:  # a rule across keys (model validator): its message names them
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            given = err.get("input")
            lines.append(f"'{key}': {err['msg']} (got {given!r})")
    return LorakitError("invalid configuration: " + "; ".join(lines), file=source)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--lora.r 16 --epochs=2 --packing` → nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise LorakitError(f"unexpected argument '{a}'", hint="Overrides look like --key value or --key=value")
        key = a[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw = args[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        if key.startswith("no-") or key.startswith("no_"):
            key, raw = key[3:], "false"
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = [p.replace("-", "_") for p in key.split(".")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LorakitError("config file not found", file=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LorakitError(f"not valid YAML ({getattr(e, 'problem', e)})", file=path,
                           line=mark.line + 1 if mark else None) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LorakitError("a config file must be a mapping of keys to values", file=path)
    return raw


def build(model: type[BaseModel], file: str | Path | None, overrides: dict[str, Any]):
    """File values, then flags on top; validated once, with errors that name the key and source."""
    raw = load_yaml(file) if file else {}
    merged = deep_merge(raw, overrides)
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise validation_error(e, str(file) if file else "command line", model) from None


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
