"""TRL's SFTTrainer with one change: the LM head runs only where the loss needs it.

On a 150k-token vocabulary the head is a fifth of a small model's compute. TRL's fused head scores every position
off-Triton and adds entropy at each step; here the forward asks the model for logits only at positions whose next
token is supervised (`logits_to_keep` with indices), through the wrapped model so DDP hooks still fire. With the
fast path's fused loss the head and the cross-entropy run together in chunks (lorakit.train.fast), so the logits
never exist at all. Metrics stay on the device between logging steps: the hot loop never waits for the GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast
from trl import SFTTrainer

from lorakit.train import fast as fastmod


class LorakitTrainer(SFTTrainer):
    def __init__(self, *args, fast: fastmod.FastPath | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = fast
        self._pending = {}  # mode → [tokens trained, tokens correct] as device tensors, read at logging steps
        self.data_collator = fastmod.StepBatches(self.data_collator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        keep = inputs.pop("lorakit_keep", None)
        tokens = inputs.pop("lorakit_tokens", None)
        inputs["use_cache"] = False
        shift = labels[:, 1:]
        if keep is None:
            keep = (shift != -100).any(dim=0).nonzero().squeeze(-1)
            if keep.numel() == 0:  # nothing supervised in this micro-batch: a differentiable zero
                keep = torch.zeros(1, dtype=torch.long, device=labels.device)
        target = shift[:, keep]
        fused = self.fast is not None and self.fast.fused_loss
        if fused:
            with fastmod.head_emits_hidden(model) as head:
                outputs = model(**inputs, logits_to_keep=keep)
            hidden = outputs.logits  # (batch, len(keep), hidden): the head returned its input
            loss_sum, correct = fastmod.linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight,
                                                             target.reshape(-1), kind=self.fast.fused_loss)
            outputs = CausalLMOutputWithPast(loss=None, logits=None)
        else:
            outputs = model(**inputs, logits_to_keep=keep)
            logits = outputs.logits  # (batch, len(keep), vocab)
            flat = logits.reshape(-1, logits.size(-1)).float()
            loss_sum = F.cross_entropy(flat, target.reshape(-1), ignore_index=-100, reduction="sum")
            with torch.no_grad():
                correct = ((logits.argmax(-1) == target) & (target != -100)).sum()
        valid = (target != -100).sum()
        denom = num_items_in_batch if num_items_in_batch is not None else valid.clamp(min=1)
        loss = loss_sum / denom
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        mode = "train" if model.training else "eval"
        acc = self._pending.setdefault(mode, [torch.zeros((), dtype=torch.long, device=labels.device)] * 2)
        acc[0] = acc[0] + valid.detach()
        acc[1] = acc[1] + correct.detach()
        if mode == "train":
            self._total_train_tokens += tokens if tokens is not None else _real_tokens(inputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        """Read the device-side counters once per logging step (and gather them across processes)."""
        mode = "train" if self.model.training else "eval"
        if mode in self._pending:
            both = self.accelerator.gather_for_metrics(torch.stack(self._pending.pop(mode))[None]).sum(0)
            n, c = both.tolist()
            self._metrics[mode]["mean_token_accuracy"] = [c / n if n > 0 else 0.0]
        if mode == "train":
            local = torch.tensor(self._total_train_tokens, device=self.args.device)
            self._metrics[mode]["num_tokens"] = [int(self.accelerator.gather_for_metrics(local[None]).sum())]
        return super().log(logs, start_time)

    def tokens_seen(self) -> int:
        """Real tokens trained so far, summed over processes."""
        local = torch.tensor(self._total_train_tokens, device=self.args.device)
        return int(self.accelerator.gather_for_metrics(local[None]).sum())

    def floating_point_ops(self, inputs) -> int:
        """6 · parameters · tokens, with the parameter count taken once (the stock one walks all parameters at
        every step)."""
        if not hasattr(self, "_n_params"):
            self._n_params = sum(p.numel() for p in self.model.parameters())
        return 6 * self._n_params * inputs["input_ids"].numel()

    def _prepare_input(self, data):
        """Host → GPU copies that do not make the host wait for the GPU (batches are pinned by the loader)."""
        if isinstance(data, torch.Tensor) and data.device.type == "cpu" and self.args.device.type == "cuda":
            return data.to(self.args.device, non_blocking=True)
        return super()._prepare_input(data)


def _real_tokens(inputs) -> int:
    """Non-pad tokens in a batch (padding-free batches have no pad at all)."""
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())
