"""A distillation run: the teacher's answers in, a trained student directory out.

The output directory holds the student (weights, tokenizer, generation config), `checkpoints/` (the run
resumes from the newest one when started again), `metrics.jsonl` (one line per logging step: losses,
tokens seen, tokens/s, CPU seconds), `tensorboard/`, and `distill.json` (the settings and the cost).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig
from torch.utils.tensorboard import SummaryWriter
from transformers import PreTrainedModel, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DistillationConfig, DistillationTrainer, SFTConfig
from trl.trainer.callbacks import RichProgressCallback

from alambic.distill.data import ExampleBuilder, TeacherAnswers
from alambic.distill.losses import Loss
from alambic.distill.trainer import LeftPaddingCollator, TeacherTargetTrainer
from alambic.errors import InvalidRequestError
from alambic.models.loading import LoadedModel, load_model
from alambic.models.student import student_from_teacher


@dataclass
class DistillConfig:
    """Everything a run needs; a TOML file of these keys or the CLI's flags fill it."""

    data: Path
    out: Path
    teacher: str = "smollm2"
    student: str | None = None  # a model directory (or `tiny`); by default a cut of the teacher
    student_layers: int | list[int] = 6
    loss: Loss = Loss.SFT
    targets: str = "auto"  # sparse (the harvest's top-k), dense (a local teacher's logits), auto
    ce_weight: float = 0.0  # the share of cross-entropy mixed into a divergence loss
    beta: float = 0.5  # jsd's mixture weight
    top_k: int = 20
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    max_length: int = 512
    heldout_fraction: float = 0.1
    max_examples: int | None = None  # train on the first N training answers only
    packing: bool = False
    lora_rank: int | None = None
    bf16: bool = False  # bf16 autocast: about twice the matmul rate on CPUs with avx512_bf16
    on_policy_tokens: int = 128  # on_policy: tokens the student samples per prompt
    save_steps: int = 100
    logging_steps: int = 10
    seed: int = 0
    extra: dict = field(default_factory=dict)  # any other SFTConfig setting

    @classmethod
    def from_mapping(cls, values: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidRequestError(f"unknown distill settings: {', '.join(unknown)}")
        values = dict(values)
        for f in fields(cls):
            if f.name in values and not _accepts(f.type, values[f.name]):
                raise InvalidRequestError(f"distill setting {f.name} = {values[f.name]!r}: expected {f.type}")
        for name in ("data", "out"):
            if name in values:
                values[name] = Path(values[name])
        if "loss" in values:
            values["loss"] = Loss(values["loss"])
        return cls(**values)


# What a setting of each annotated type may be given as (a TOML file's values, or Python's); paths and the loss come
# as text too, and are converted.
ACCEPTED = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "dict": (dict,),
    "Path": (str, Path),
    "Loss": (str, Loss),
}


def _accepts(annotation: str, value: object) -> bool:
    """Whether `value` may fill a setting annotated `annotation` ("int | None", "int | list[int]", ...); a bool is no
    number."""
    for kind in annotation.split(" | "):
        if kind == "None" and value is None:
            return True
        if kind.startswith("list[") and isinstance(value, list):
            return all(_accepts(kind[5:-1], item) for item in value)
        accepted = ACCEPTED.get(kind, ())
        if isinstance(value, accepted) and (kind == "bool" or not isinstance(value, bool)):
            return True
    return False


@dataclass
class DistillResult:
    out: Path
    steps: int
    tokens_seen: int
    cpu_seconds: float
    wall_seconds: float
    train_examples: int
    examples_with_targets: int
    targets: str
    top_k: int  # sparse targets: the teacher's alternatives per token


def distill(
    config: DistillConfig,
    *,
    progress: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    say: Callable[[str], None] = lambda line: None,
) -> DistillResult:
    """Train the student on the teacher's answers, resuming from the newest checkpoint in `config.out`; `say`
    hears first which targets it learns from and why."""
    _refuse_a_launch_that_started_one_process()
    answers = TeacherAnswers.load(config.data, config.heldout_fraction)
    targets = choose_targets(config, answers)
    if PartialState().is_main_process:
        say(str(targets))
    needs_teacher = config.student is None or targets.kind in ("dense", "on_policy")
    teacher = load_model(config.teacher) if needs_teacher else None
    student = load_model(config.student) if config.student else student_from_teacher(teacher, config.student_layers)
    rows = answers.train[: config.max_examples]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=_checkpoint_step(resume))
    run_callbacks = [
        metrics,
        TensorBoardCallback(SummaryWriter(str(out / "tensorboard"))),
        *([RichProgressCallback()] if progress else []),
        *callbacks,
    ]
    if targets.kind == "on_policy":
        trainer, with_targets = _on_policy_trainer(config, student, teacher, rows, checkpoints, run_callbacks), 0
    else:
        trainer, with_targets = _offline_trainer(config, student, teacher, rows, targets, checkpoints, run_callbacks)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    wall_seconds = metrics.wall_base + time.perf_counter() - started
    model = trainer.model.merge_and_unload() if config.lora_rank else trainer.model
    main_process = trainer.accelerator.is_main_process  # under `accelerate launch`, one process writes
    if main_process:
        _save_student(model, student, teacher, out)
    result = DistillResult(
        out=out,
        steps=trainer.state.global_step,
        tokens_seen=metrics.tokens_seen,
        cpu_seconds=metrics.cpu_seconds,
        wall_seconds=wall_seconds,
        train_examples=len(rows),
        examples_with_targets=with_targets,
        targets=targets.kind,
        top_k=targets.top_k,
    )
    settings = {**asdict(config), "data": str(config.data), "out": str(out)}
    summary = {"config": settings, **asdict(result), "out": str(out)}
    if main_process:
        (out / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _refuse_a_launch_that_started_one_process() -> None:
    """`accelerate launch --cpu --num_processes N` starts a single process (several CPU processes need its
    mpirun mode) that would train the whole job alone, more slowly: refused, naming the launcher that works."""
    asked_for_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    launched = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    if asked_for_cpu and "MASTER_ADDR" in os.environ and not any(name in os.environ for name in launched):
        raise InvalidRequestError(
            "accelerate launch --cpu started one process, not several: train data-parallel on CPUs with "
            "torchrun --nproc-per-node N -m alambic distill ..."
        )


class MetricsLog(TrainerCallback):
    """Appends each logged step to a JSONL file with tokens/s and the run's CPU seconds so far. A resumed
    run first drops the lines past its checkpoint, so every step appears once and the cost adds up."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        kept = []
        if path.exists():
            kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [line for line in kept if line["step"] <= resume_step]
        if PartialState().is_main_process:
            path.write_text("".join(json.dumps(line) + "\n" for line in kept))
        last = kept[-1] if kept else {}
        self.cpu_base, self.wall_base = last.get("cpu_s", 0.0), last.get("wall_s", 0.0)
        self.tokens_base = last.get("tokens_seen", 0)
        self.tokens_seen = self.tokens_base
        self.cpu_seconds = self.cpu_base
        self._cpu_start, self._wall_start = time.process_time(), time.perf_counter()
        self._last = (self._wall_start, self.tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        logs = dict(logs or {})
        if "num_tokens" in logs:
            self.tokens_seen = self.tokens_base + int(logs.pop("num_tokens"))
        now = time.perf_counter()
        self.cpu_seconds = self.cpu_base + time.process_time() - self._cpu_start
        line = {
            "step": state.global_step,
            "epoch": state.epoch,
            "tokens_seen": self.tokens_seen,
            "tokens_per_s": (self.tokens_seen - self._last[1]) / max(now - self._last[0], 1e-9),
            "cpu_s": self.cpu_seconds,
            "wall_s": self.wall_base + now - self._wall_start,
            **logs,
        }
        self._last = (now, self.tokens_seen)
        with self.path.open("a") as file:
            file.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class Targets:
    """What a run learns from, and why: said before training starts."""

    kind: str  # none (sft), sparse (the harvest's top-k), dense (a local teacher's logits), on_policy
    top_k: int = 0  # sparse: the teacher's alternatives used per token
    reason: str = ""

    def __str__(self) -> str:
        return f"targets: {self.kind}, {self.reason}"


def choose_targets(config: DistillConfig, answers: TeacherAnswers) -> Targets:
    """The harvest's top-k when it has logprobs (at most `top_k` of them), else a local teacher's logits;
    sparse targets from a harvest without logprobs are refused rather than trained on a zero loss."""
    if config.loss is Loss.SFT:
        return Targets("none", reason="sft learns the answers' tokens")
    if config.loss is Loss.ON_POLICY:
        return Targets("on_policy", reason="the student samples, the local teacher scores")
    if config.targets not in ("sparse", "dense", "auto"):
        raise InvalidRequestError(f"targets must be sparse, dense or auto, not {config.targets!r}")
    if config.targets == "dense":
        return Targets("dense", reason="the local teacher's logits, as asked")
    kept = max((len(row.logprobs[0]["top_logprobs"]) for row in answers.train if row.logprobs), default=0)
    if not kept:
        if config.targets == "sparse":
            raise InvalidRequestError(
                f"{config.data} has no logprobs for sparse targets: harvest with --top-logprobs, "
                "or use --targets dense (a local teacher's logits)"
            )
        return Targets("dense", reason="the local teacher's logits, as the harvest has no logprobs")
    top_k = min(config.top_k, kept)
    fewer = f" (it kept {kept} a token, fewer than --top-k {config.top_k})" if kept < config.top_k else ""
    return Targets("sparse", top_k, f"the harvest's top-{top_k} logprobs{fewer}")


def _shared_arguments(config: DistillConfig, checkpoints: Path) -> dict:
    """The TrainingArguments both trainers take alike: schedule, checkpoints, logging, precision, device."""
    return dict(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        report_to=[],  # TensorBoard through the callback `distill` adds, writing where the run says
        seed=config.seed,
        bf16=config.bf16,
        activation_checkpointing=False,  # TRL turns it on; a model this small has the memory, not the time
        ddp_find_unused_parameters=False,  # every trained parameter is used: spare DDP a graph walk a step
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **config.extra,
    )


def _training_arguments(config: DistillConfig, checkpoints: Path, *, packed: bool) -> SFTConfig:
    return SFTConfig(
        **_shared_arguments(config, checkpoints),
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="cosine",
        max_length=config.max_length,
        packing=config.packing,
        packing_strategy="wrapped",  # bfd needs a padding-free attention kernel, which CPUs lack
        remove_unused_columns=False,  # the collator reads the teacher's targets
        dataset_kwargs=None if packed else {"skip_prepare_dataset": True},
    )


def _offline_trainer(
    config: DistillConfig,
    student: LoadedModel,
    teacher: LoadedModel | None,
    rows: list,
    targets: Targets,
    checkpoints: Path,
    callbacks: list[TrainerCallback],
) -> tuple[TeacherTargetTrainer, int]:
    """The trainer on the harvested answers, and how many of them carry sparse targets."""
    packed = config.packing and config.loss is Loss.SFT
    if config.packing and not packed:
        raise InvalidRequestError("packing is for sft: a divergence needs each answer's own targets")
    top_k = targets.top_k  # 0 unless sparse
    builder = ExampleBuilder(student.tokenizer, max_length=config.max_length, top_k=top_k or config.top_k)
    train = builder.dataset(rows, targets=bool(top_k))
    with_targets = sum(1 for ids in train["teacher_ids"] if ids) if top_k else 0
    if top_k and not with_targets:
        raise InvalidRequestError(
            "no answer's logprobs name tokens of the student's tokenizer: sparse targets need the teacher's "
            "tokenizer; use --targets dense (a local teacher's logits)"
        )
    trainer = TeacherTargetTrainer(
        model=student.model.train(),
        args=_training_arguments(config, checkpoints, packed=packed),
        train_dataset=train,
        processing_class=student.tokenizer,
        data_collator=None if packed else LeftPaddingCollator(_pad_id(student), top_k),
        peft_config=_lora(config),
        callbacks=callbacks,
        loss=config.loss,
        ce_weight=config.ce_weight,
        beta=config.beta,
        teacher=teacher.model if targets.kind == "dense" else None,
    )
    return trainer, with_targets


def _on_policy_trainer(
    config: DistillConfig,
    student: LoadedModel,
    teacher: LoadedModel,
    rows: list,
    checkpoints: Path,
    callbacks: list[TrainerCallback],
) -> DistillationTrainer:
    """GKD (Agarwal et al. 2024) through TRL: the student answers the harvest's prompts itself and learns the
    teacher's distribution on its own samples; `beta` 0 is forward KL, 1 reverse KL, between them JSD."""
    arguments = DistillationConfig(
        **_shared_arguments(config, checkpoints),
        beta=config.beta,
        max_completion_length=config.on_policy_tokens,
    )
    return DistillationTrainer(
        model=student.model.train(),
        teacher_model=teacher.model,
        args=arguments,
        train_dataset=Dataset.from_list([{"prompt": row.messages} for row in rows]),
        processing_class=student.tokenizer,
        peft_config=_lora(config),
        callbacks=callbacks,
    )


def _lora(config: DistillConfig) -> LoraConfig | None:
    if not config.lora_rank:
        return None
    return LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear")


def _pad_id(model: LoadedModel) -> int:
    tokenizer = model.tokenizer
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _checkpoint_step(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def _save_student(model: PreTrainedModel, student: LoadedModel, teacher: LoadedModel | None, out: Path) -> None:
    if teacher is not None:
        model.generation_config = teacher.model.generation_config
    model.save_pretrained(out)
    student.tokenizer.save_pretrained(out)
