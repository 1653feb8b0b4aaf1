"""Training objectives (``stage``): which records each one learns from and which TRL trainer carries it out.

| stage | records | TRL trainer | reference |
| --- | --- | --- | --- |
| sft | conversations | `LorakitTrainer` (SFTTrainer) | none |
| dpo | preference pairs | `DPOTrainer` (loss_type sigmoid, ipo, hinge, …) | the base with the adapter disabled, or a frozen copy of the starting adapter |
| kto | labelled replies (pairs are split into one desirable and one undesirable reply) | `KTOTrainer` | as DPO |
| orpo | preference pairs | `ORPOTrainer` (trl.experimental) | none (odds ratio + NLL) |
| simpo | preference pairs | `CPOTrainer` with loss_type simpo, cpo_alpha 0 (trl.experimental) | none (length-normalised) |

The trainers tokenize TRL's conversational form (`Preference.to_trl`, `Feedback.to_trl`) with the model's own chat
template; the adapter ``method`` (lora, qlora, full) is independent of the stage. With a LoRA adapter the
reference costs no second model: TRL computes it with the adapter disabled (a new adapter starts as the identity) or,
when training continues an SFT adapter, with a frozen copy of that adapter's few MB of weights.
"""
from __future__ import annotations

import json
import os
from typing import Any

from lorakit.data.preference import unpaired
from lorakit.data.record import Conversation, Feedback, Preference, as_conversation, record_kind
from lorakit.errors import LorakitError

NEEDS = {"sft": "sft", "dpo": "preference", "orpo": "preference", "simpo": "preference", "kto": "kto"}
_KIND_WORDS = {"sft": "SFT conversations (prompt and answer)", "preference": "preference pairs (prompt, chosen, "
               "rejected)", "kto": "KTO records (a reply labelled desirable or not)"}
# what the run log and the plot show for the preference objectives
PREFERENCE_METRICS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "logps/chosen",
                      "logps/rejected")


def records_for_stage(records: list, stage: str, path: str) -> list:
    """The records as the stage trains them, or a clear error when the file holds another kind."""
    kinds = {record_kind(r) for r in records}
    need = NEEDS[stage]
    if kinds == {need}:
        return records
    if stage == "kto" and kinds == {"preference"}:
        return unpaired(records)
    have = " and ".join(_KIND_WORDS[k] for k in sorted(kinds))
    hint = {"sft": "Train pairs with --stage dpo (or orpo, simpo, kto) and labelled replies with --stage kto",
            "preference": "`lorakit data pairs` makes pairs from Q&A records; labelled replies train with --stage kto",
            "kto": "Labelled replies train with --stage kto; SFT conversations with --stage sft"}[need]
    raise LorakitError(f"stage {stage} learns from {_KIND_WORDS[need]}, but this file holds {have}", file=path,
                       field="stage", hint=hint)


def views(records: list) -> list[Conversation]:
    """The conversation each record trains like (a pair: prompt + chosen; KTO: prompt + reply)."""
    return [as_conversation(r) for r in records]


def _rows(records: list) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = r.to_trl()
        if "tools" in row:  # TRL reads a JSON string; Arrow cannot hold schemas that differ per record
            row["tools"] = json.dumps(row["tools"], ensure_ascii=False)
        rows.append(row)
    return rows


def preference_trainer(cfg, model, tokenizer, train_recs: list, eval_recs: list, common: dict, callbacks: list,
                       peft_cfg):
    """The TRL trainer of a preference stage, with lorakit's shared arguments (``common``) and callbacks."""
    from datasets import Dataset
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # lorakit names the trainer it uses in its docs
    beta = cfg.beta()
    args: dict[str, Any] = {**common, "max_length": cfg.max_length, "beta": beta}
    if cfg.stage == "dpo":
        from trl import DPOConfig as Config, DPOTrainer as Trainer
        args.update(loss_type=[cfg.pref.loss_type or "sigmoid"], label_smoothing=cfg.pref.label_smoothing)
    elif cfg.stage == "kto":
        from trl import KTOConfig as Config, KTOTrainer as Trainer
        args.update(loss_type=cfg.pref.loss_type or "kto", desirable_weight=cfg.pref.desirable_weight,
                    undesirable_weight=cfg.pref.undesirable_weight)
    elif cfg.stage == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
    elif cfg.stage == "simpo":
        from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
        args.update(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=cfg.pref.simpo_gamma)
    else:
        raise ValueError(cfg.stage)
    kw = dict(model=model, args=Config(**args), processing_class=tokenizer, peft_config=peft_cfg,
              train_dataset=Dataset.from_list(_rows(train_recs)),
              eval_dataset=Dataset.from_list(_rows(eval_recs)) if eval_recs else None, callbacks=callbacks)
    return Trainer(**kw)


def last_preference_metrics(log_history: list[dict]) -> dict[str, float]:
    """The latest logged value of each preference metric (train), for the run summary."""
    out: dict[str, float] = {}
    for row in log_history:
        for k in PREFERENCE_METRICS:
            if k in row:
                out[k] = round(float(row[k]), 5)
    return out


def describe(rec) -> list[tuple[str, list[dict]]]:
    """(label, messages) of the sequences a record trains on, for the dry-run view."""
    if isinstance(rec, Preference):
        return [("chosen", rec.conversation("chosen").messages()), ("rejected", rec.conversation("rejected").messages())]
    if isinstance(rec, Feedback):
        return [("desirable" if rec.label else "undesirable", rec.conversation().messages())]
    return [("", rec.messages())]
