"""TRL's SFTTrainer with one change: the LM head runs only where the loss needs it.

On a 150k-token vocabulary the head is a fifth of a small model's compute. TRL's fused head scores every position
off-Triton and adds entropy at each step; here the forward asks the model for logits only at positions whose next
token is supervised (`logits_to_keep` with indices), through the wrapped model so DDP hooks still fire.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer


class LorakitTrainer(SFTTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        inputs["use_cache"] = False
        shift = labels[:, 1:]
        keep = (shift != -100).any(dim=0).nonzero().squeeze(-1)
        if keep.numel() == 0:  # nothing supervised in this micro-batch: a differentiable zero
            keep = torch.zeros(1, dtype=torch.long, device=labels.device)
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits  # (batch, len(keep), vocab)
        target = shift[:, keep]
        flat = logits.reshape(-1, logits.size(-1)).float()
        loss_sum = F.cross_entropy(flat, target.reshape(-1), ignore_index=-100, reduction="sum")
        n_local = (target != -100).sum()
        denom = num_items_in_batch if num_items_in_batch is not None else n_local.clamp(min=1)
        loss = loss_sum / denom
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        mode = "train" if model.training else "eval"
        with torch.no_grad():
            valid = target != -100
            correct = (logits.argmax(-1) == target) & valid
            n = self.accelerator.gather_for_metrics(valid.sum()).sum()
            c = self.accelerator.gather_for_metrics(correct.sum()).sum()
            self._metrics[mode]["mean_token_accuracy"].append((c / n).item() if n > 0 else 0.0)
            if mode == "train":
                local = torch.tensor(_real_tokens(inputs), device=labels.device)
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum().item())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


def _real_tokens(inputs) -> int:
    """Non-pad tokens in a batch (padding-free batches have no pad at all)."""
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())
