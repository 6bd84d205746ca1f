"""TRL's SFTTrainer, taught to learn from a teacher's distribution as well as its tokens, and to spend the
LM head only where there is something to learn.

Batches are padded on the left, so every row's answer ends at the last position and the logits are needed
only for the last `answer span` positions: the prompt's share of the 49k-wide LM head (and its backward) is
never computed. The loss mixes cross-entropy on the teacher's answer tokens with a divergence from the
teacher's next-token distribution: its top-k from the harvest (sparse) or a local teacher's full logits
(dense). With packing, SFT runs through SFTTrainer's own collator and loss.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from trl import SFTTrainer

from alambic.distill.losses import Loss, dense_divergence, sparse_divergence


class LeftPaddingCollator:
    """`input_ids`, `attention_mask`, `position_ids`, `labels` padded on the left; with sparse targets also
    `teacher_ids` and `teacher_logprobs` (B, T, k) and `teacher_mask` (B, T), true where a label has them."""

    def __init__(self, pad_token_id: int, top_k: int = 0) -> None:
        self.pad_token_id = pad_token_id
        self.top_k = top_k

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        size, length = len(examples), max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((size, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((size, length), -100, dtype=torch.long)
        attention = torch.zeros(size, length, dtype=torch.long)
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        if self.top_k:
            batch["teacher_ids"] = torch.zeros(size, length, self.top_k, dtype=torch.long)
            batch["teacher_logprobs"] = torch.zeros(size, length, self.top_k)
            batch["teacher_mask"] = torch.zeros(size, length, dtype=torch.bool)
        for row, example in enumerate(examples):
            offset = length - len(example["input_ids"])
            input_ids[row, offset:] = torch.tensor(example["input_ids"])
            labels[row, offset:] = torch.tensor(example["labels"])
            attention[row, offset:] = 1
            count = len(example.get("teacher_ids") or ()) if self.top_k else 0
            if count:
                span = slice(offset + example["answer_start"], offset + example["answer_start"] + count)
                batch["teacher_ids"][row, span] = torch.tensor(example["teacher_ids"])
                batch["teacher_logprobs"][row, span] = torch.tensor(example["teacher_logprobs"])
                batch["teacher_mask"][row, span] = True
        batch["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
        return batch


class TeacherTargetTrainer(SFTTrainer):
    """`loss = ce_weight * CE + (1 - ce_weight) * divergence` (CE alone for SFT), each averaged over the tokens of
    the whole optimizer step: every micro-batch of gradient accumulation, on every data-parallel process.

    The divergence uses the local `teacher` when one is given (every answer token), else the sparse targets
    in the batch (the answer tokens that have them).
    """

    def __init__(
        self,
        *args,
        loss: Loss,
        ce_weight: float = 0.0,
        beta: float = 0.5,
        teacher: PreTrainedModel | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.distill_loss, self.beta = loss, beta
        self.ce_weight = 1.0 if loss is Loss.SFT else ce_weight
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self._scored_in_step: torch.Tensor | None = None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches and their answer tokens (the Trainer's count), and with sparse targets the
        answer tokens that carry them, counted on every process: what the divergence is averaged over."""
        batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches and "teacher_mask" in batches[0]:
            scored = sum((batch["teacher_mask"] & batch["labels"].ne(-100)).sum() for batch in batches)
            scored = torch.as_tensor(scored, device=device)
            self._scored_in_step = self._summed(scored) if self.args.average_tokens_across_devices else scored
        return batches, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "position_ids" not in inputs:  # packed SFT: SFTTrainer's own batches and loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        answer_rows = (labels != -100).any(0)
        keep = labels.shape[1] - int(answer_rows.float().argmax()) + 1  # positions that predict an answer token
        forward = {name: inputs[name] for name in ("input_ids", "attention_mask", "position_ids")}
        outputs = model(**forward, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits[:, :-1]  # position t predicts token t + 1
        targets = labels[:, -keep + 1 :]
        answer = targets != -100
        # Training: sums over this micro-batch divided by the whole step's token counts, so the micro-batches'
        # losses add up to the step's mean (the Trainer then leaves them undivided) and the gradient is the one
        # of the whole batch. DDP averages gradients over processes, hence the factor; elsewhere, this batch's mean.
        step_wide = model.training and num_items_in_batch is not None
        answer_tokens = num_items_in_batch if step_wide else answer.sum()
        processes = self.accelerator.num_processes if step_wide and self.args.average_tokens_across_devices else 1
        per_micro_batch = self.current_gradient_accumulation_steps * processes if step_wide else 1
        mode = "train" if model.training else "eval"
        ce = torch.nn.functional.cross_entropy(logits[answer].float(), targets[answer], reduction="sum")
        ce = ce * processes / _at_least_one(answer_tokens)
        loss = self.ce_weight * ce
        self._record(mode, "ce", ce, per_micro_batch / processes)
        if self.ce_weight < 1.0:
            per_token, scored = self._divergence(inputs, forward, logits, answer, keep)
            if step_wide:
                scored = answer_tokens if self.teacher is not None else self._scored_in_step
            divergence = per_token.sum() if per_token.numel() else logits.sum() * 0.0
            divergence = divergence * processes / _at_least_one(scored)
            loss = loss + (1 - self.ce_weight) * divergence
            self._record(mode, str(self.distill_loss), divergence, per_micro_batch / processes)
        if mode == "train":
            self._total_train_tokens += int(self._summed(inputs["attention_mask"].sum()))
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def _divergence(self, inputs, forward, logits, answer, keep) -> tuple[torch.Tensor, torch.Tensor]:
        """The divergence at each answer token that has a target, and how many those are."""
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(**forward, use_cache=False, logits_to_keep=keep).logits[:, :-1]
            per_token = dense_divergence(teacher_logits[answer], logits[answer], self.distill_loss, self.beta)
            return per_token, answer.sum()
        scored = inputs["teacher_mask"][:, -keep + 1 :] & answer
        per_token = sparse_divergence(
            inputs["teacher_ids"][:, -keep + 1 :][scored],
            inputs["teacher_logprobs"][:, -keep + 1 :][scored],
            logits[scored],
            self.distill_loss,
            self.beta,
        )
        return per_token, scored.sum()

    def _record(self, mode: str, name: str, value: torch.Tensor, scale: float) -> None:
        """Log a micro-batch's share of the step's mean so that SFTTrainer's average over the micro-batches it
        logged is the mean over their tokens, and the same on every process."""
        value = value.detach() * scale
        if self.accelerator.num_processes > 1:
            value = self.accelerator.gather(value).mean()
        self._metrics[mode][name].append(value.item())

    def _summed(self, count: torch.Tensor) -> torch.Tensor:
        """A count summed over the data-parallel processes (as the Trainer sums `num_items_in_batch`)."""
        return self.accelerator.gather(count).sum() if self.accelerator.num_processes > 1 else count


def _at_least_one(count: torch.Tensor | int) -> torch.Tensor:
    return torch.as_tensor(count).clamp(min=1)
