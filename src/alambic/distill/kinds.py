"""The losses a student can be trained with, by name: the CLI lists them without loading torch."""

from enum import StrEnum


class Loss(StrEnum):
    SFT = "sft"
    FORWARD_KL = "forward_kl"  # KL(teacher || student): mode-covering
    REVERSE_KL = "reverse_kl"  # KL(student || teacher): mode-seeking
    JSD = "jsd"  # generalised Jensen-Shannon, beta = 0.5 is the symmetric one
    ON_POLICY = "on_policy"  # GKD: the student samples, the teacher scores (TRL's DistillationTrainer)
