"""TRL's SFTTrainer with one change: the LM head runs only where the loss needs it.

On a 150k-token vocabulary the head is a fifth of a small model's compute. TRL's fused head scores every position
off-Triton and adds entropy at each step; here the forward asks the model for logits only at positions whose next
token is supervised (`logits_to_keep` with indices), through the wrapped model so DDP hooks still fire. With the
fast path's fused loss the head and the cross-entropy run together in chunks (lorakit.train.fast), so the logits
never exist at all. Metrics stay on the device between logging steps; with the fast path's async logs (one CUDA
process) a logging step only starts a copy of its numbers to pinned host memory and they are logged one step later,
so the hot loop never waits for the GPU.
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
        self._deferred = None  # a logging step's numbers on their way to the host (async logs)
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

    # ------------------------------------------------------------------------------------------- async logs
    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                 learning_rate=None):
        """Trainer's log/evaluate/save step. With async logs a plain logging step (no evaluation, no save, not the
        last step) starts a non-blocking copy of the loss sum, grad norm and token counters and returns; the next
        call logs them (by then the GPU has finished that step while the following one is queued)."""
        want = self.control.should_log
        self._flush_deferred()  # its on_log resets control.should_log, which belongs to this step
        c = self.control
        c.should_log = want
        if (self.fast is not None and self.fast.async_logs and c.should_log and not c.should_evaluate
                and not c.should_save and not c.should_training_stop
                and self.state.global_step > self._globalstep_last_logged and self.args.world_size == 1):
            self._defer_log(tr_loss, grad_norm, learning_rate)
            c.should_log = False
            return
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time,
                                         learning_rate=learning_rate)

    def _defer_log(self, tr_loss, grad_norm, learning_rate):
        zero = torch.zeros((), dtype=torch.long, device=tr_loss.device)
        n, c = self._pending.pop("train", [zero, zero])
        dev = tr_loss.device
        gn = grad_norm.detach().to(dev) if isinstance(grad_norm, torch.Tensor) else torch.full(
            (), float("nan") if grad_norm is None else float(grad_norm), device=dev)  # a fill, not a host copy
        vals = torch.stack([tr_loss.detach().double(), gn.double(), n.double(), c.double()])
        event = None
        if vals.is_cuda:
            host = torch.empty(4, dtype=torch.float64, pin_memory=True)
            host.copy_(vals, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = vals.clone()
        tr_loss -= tr_loss  # after the copy on the same stream
        steps = self.state.global_step - self._globalstep_last_logged
        self._globalstep_last_logged = self.state.global_step
        self.store_flos()
        if learning_rate is None:
            learning_rate = self._get_learning_rate()
        self._deferred = dict(host=host, event=event, steps=steps, lr=learning_rate, step=self.state.global_step,
                              epoch=self.state.epoch, tokens=self._total_train_tokens,
                              has_norm=grad_norm is not None)

    def _flush_deferred(self):
        d, self._deferred = self._deferred, None
        if d is None:
            return
        if d["event"] is not None:
            d["event"].synchronize()
        loss_sum, gn, n, c = d["host"].tolist()
        logs = {"loss": loss_sum / d["steps"]}
        if d["has_norm"]:
            logs["grad_norm"] = gn
        logs["learning_rate"] = d["lr"]
        self._total_loss_scalar += loss_sum
        self._metrics["train"]["mean_token_accuracy"] = [c / n if n > 0 else 0.0]
        self._metrics["train"]["num_tokens"] = [int(d["tokens"])]
        step, ep = self.state.global_step, self.state.epoch
        self.state.global_step, self.state.epoch = d["step"], d["epoch"]  # the record says the step it is about
        try:
            super().log(logs)  # SFTTrainer.log: the counters read above, not lorakit's log()
        finally:
            self.state.global_step, self.state.epoch = step, ep

    def _finalize_training(self, *args, **kwargs):
        self._flush_deferred()
        return super()._finalize_training(*args, **kwargs)

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
