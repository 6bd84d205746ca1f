"""Distilling the real teacher into its 6-layer cut (layers 0, 6, 12, 18, 24, 29), in one run.

- Acceptance: SFT on every training answer of the harvest (>= 2,000), agreement and KL with the teacher
  before and after, on held-out answers.
- Recovery per loss: SFT, forward KL, reverse KL and JSD (top-20 sparse targets from the harvest) on the same
  first 500 training answers with the same steps; the share of the teacher's self-agreement (1.0) reached,
  and of the agreement gap and KL closed.
- Throughput: alambic's trainer against a plain `transformers.Trainer` on the same examples, in fp32 and,
  where the CPU has bf16 instructions, in bf16 autocast (as the runs above then train), each precision
  against the Trainer in the same precision: each warmed up once, then measured in interleaved rounds, the
  median of each reported.
- Memory: bytes a token of stored top-20 targets takes against dense fp32 logits over the 49k vocabulary.
- Student against teacher: parameters, weights on disk, generation tokens/s on this machine.
Run: `.venv/bin/python benchmarks/bench_distill.py` (harvests the teacher's answers first if they are missing;
`--quick` runs every step on a few examples, to check the script, and writes nothing; `--throughput` reruns
only the throughput comparison and updates that part of the results).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from statistics import median

from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from alambic.distill.data import ExampleBuilder, TeacherAnswers
from alambic.distill.losses import Loss
from alambic.distill.run import DistillConfig, DistillResult, distill
from alambic.evaluate.fidelity import fidelities
from alambic.evaluate.run import generation_speed
from alambic.models import load_model, smollm2_directory
from alambic.models.cpu import native_bf16
from alambic.models.student import parameter_count, student_from_teacher
from common import write_result
from teacher_answers import PROMPTS, WORK, answers

QUICK = "--quick" in sys.argv
THROUGHPUT_ONLY = "--throughput" in sys.argv
LAYERS = 6
HELDOUT_SCORED = 8 if QUICK else 150
SUBSET = 16 if QUICK else 500  # training answers per loss in the comparison
THROUGHPUT_EXAMPLES = 16 if QUICK else 160
# bf16 autocast is measured only where the CPU has bf16 instructions: elsewhere no one would train in it
PRECISIONS = ("fp32", "bf16") if native_bf16() else ("fp32",)
THROUGHPUT_PROMPTS = 200  # enough for THROUGHPUT_EXAMPLES training answers
THROUGHPUT_ROUNDS = 1 if QUICK else 3  # after one warm-up round
ALL = 32 if QUICK else None
TRAINING = dict(
    student_layers=LAYERS, batch_size=8, learning_rate=2e-4, max_length=384, bf16=native_bf16(), save_steps=1000
)  # bf16 autocast only where the CPU has bf16 instructions: elsewhere it is emulated, and slower


def run(data: Path, name: str, **settings) -> tuple[DistillResult, Path]:
    out = WORK / "distill" / name
    shutil.rmtree(out, ignore_errors=True)  # a benchmark starts clean
    result = distill(DistillConfig(data=data, out=out, **{**TRAINING, **settings}))
    print(f"{name}: {result.steps} steps, {result.tokens_seen / result.wall_seconds:.0f} tok/s", flush=True)
    return result, out


def trainer_baseline(student, examples: list[dict], *, bf16: bool) -> float:
    """Tokens/s of a plain transformers.Trainer on the same examples: right padding, full logits."""
    arguments = TrainingArguments(
        output_dir=str(WORK / "distill" / "trainer-baseline"),
        per_device_train_batch_size=TRAINING["batch_size"],
        learning_rate=TRAINING["learning_rate"],
        num_train_epochs=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=bf16,
    )
    if student.tokenizer.pad_token is None:
        student.tokenizer.pad_token = student.tokenizer.eos_token
    collator = DataCollatorForSeq2Seq(student.tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=student.model.train(), args=arguments, train_dataset=examples, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    return sum(len(e["input_ids"]) for e in examples) / (time.perf_counter() - started)


def sparse_target_bytes(data: Path, tokenizer) -> float:
    """Stored bytes per answer token of the top-20 targets, as the training dataset holds them."""
    rows = TeacherAnswers.load(data).train[:200]
    dataset = ExampleBuilder(tokenizer, max_length=TRAINING["max_length"]).dataset(rows)
    columns = dataset.data
    stored = columns.column("teacher_ids").nbytes + columns.column("teacher_logprobs").nbytes
    return stored / sum(len(ids) for ids in dataset["teacher_ids"])


def throughput(data: Path, teacher, split: TeacherAnswers, builder: ExampleBuilder) -> dict:
    """alambic's trainer against a plain transformers.Trainer, same examples, in each of PRECISIONS: each warmed
    up once, then all measured in turn for each round, so that a slower stretch of the machine's time
    falls on all of them; the medians, and each precision's ratio to the Trainer in the same precision."""
    examples = [builder.example(row, targets=False) for row in split.train[:THROUGHPUT_EXAMPLES]]

    def alambic(bf16: bool) -> float:
        result, _ = run(data, "throughput", loss=Loss.SFT, max_examples=THROUGHPUT_EXAMPLES, bf16=bf16)
        return result.tokens_seen / result.wall_seconds

    def trainer(bf16: bool) -> float:
        return trainer_baseline(student_from_teacher(teacher, LAYERS), examples, bf16=bf16)

    contenders = {"alambic": alambic, "transformers_trainer": trainer}
    measured = {(name, precision): [] for precision in PRECISIONS for name in contenders}
    for round_ in range(1 + THROUGHPUT_ROUNDS):
        for name, precision in measured:
            tok_s = contenders[name](precision == "bf16")
            if round_:  # the first round warms each one up
                measured[name, precision].append(tok_s)
    figures = {"rounds": THROUGHPUT_ROUNDS}
    for precision in PRECISIONS:
        alambic_tok_s = median(measured["alambic", precision])
        trainer_tok_s = median(measured["transformers_trainer", precision])
        figures[precision] = {
            "transformers_trainer_tok_s": trainer_tok_s,
            "alambic_tok_s": alambic_tok_s,
            "ratio": alambic_tok_s / trainer_tok_s,
        }
    return figures


def main() -> None:
    # quick: whatever is harvested so far; throughput: the first prompts' answers are enough
    data = WORK / "answers-plain" if QUICK else answers("plain", THROUGHPUT_PROMPTS if THROUGHPUT_ONLY else PROMPTS)
    teacher = load_model("smollm2")
    split = TeacherAnswers.load(data)
    builder = ExampleBuilder(teacher.tokenizer, max_length=TRAINING["max_length"])
    if THROUGHPUT_ONLY:
        figures = throughput(data, teacher, split, builder)
        print(figures)
        if not QUICK:
            print("wrote", write_result("distill", {"throughput": figures}, update=True))
        return
    heldout = [builder.example(row, targets=False) for row in split.heldout[:HELDOUT_SCORED]]
    undistilled = student_from_teacher(teacher, LAYERS)

    full, full_dir = run(data, "sft-all", loss=Loss.SFT, max_examples=ALL)
    compared = {
        loss: run(data, f"{loss}-{SUBSET}", loss=loss, max_examples=SUBSET)
        for loss in (Loss.SFT, Loss.FORWARD_KL, Loss.REVERSE_KL, Loss.JSD)
    }
    students = {"undistilled": undistilled.model, "sft-all": load_model(str(full_dir)).model}
    students |= {str(loss): load_model(str(out)).model for loss, (_, out) in compared.items()}
    scores = fidelities(students, teacher.model, heldout)
    before = scores["undistilled"]

    def figures(name: str, result: DistillResult) -> dict:
        after = scores[name]
        return {
            "train_answers": result.train_examples,
            "steps": result.steps,
            "agreement_before": before.agreement,
            "agreement_after": after.agreement,
            "kl_before": before.kl,
            "kl_after": after.kl,
            "perplexity_before": before.perplexity,
            "perplexity_after": after.perplexity,
            "agreement_recovered": after.agreement / 1.0,  # of the teacher's self-agreement
            "agreement_gap_closed": (after.agreement - before.agreement) / (1.0 - before.agreement),
            "kl_closed": (before.kl - after.kl) / before.kl,
            "train_tokens_per_s": result.tokens_seen / result.wall_seconds,
            "train_cpu_s": result.cpu_seconds,
            "train_tokens": result.tokens_seen,
        }

    per_token = sparse_target_bytes(data, teacher.tokenizer)
    dense = len(teacher.tokenizer) * 4
    student = load_model(str(full_dir))
    teacher_speed, student_speed = generation_speed(teacher), generation_speed(student)
    result = {
        "teacher": "smollm2 (SmolLM2-135M-Instruct, fp32)",
        "student": f"{LAYERS} of 30 layers, weights copied ({undistilled.model.config.num_hidden_layers} layers)",
        "heldout_answers_scored": len(heldout),
        "heldout_tokens_scored": before.tokens,
        "acceptance": figures("sft-all", full),
        "losses": {str(loss): figures(str(loss), r) for loss, (r, _) in compared.items()},
        "throughput": throughput(data, teacher, split, builder),
        "memory": {
            "sparse_top20_bytes_per_token": per_token,
            "dense_fp32_bytes_per_token": dense,
            "ratio": per_token / dense,
        },
        "student_vs_teacher": {
            "parameters": parameter_count(student.model) / parameter_count(teacher.model),
            "disk": sum(p.stat().st_size for p in full_dir.glob("*.safetensors"))
            / sum(p.stat().st_size for p in smollm2_directory().glob("*.safetensors")),
            "generation_tokens_per_s": student_speed / teacher_speed,
            "teacher_tokens_per_s": teacher_speed,
            "student_tokens_per_s": student_speed,
        },
        "targets": {"throughput ratio": ">= 1.0", "memory ratio": "<= 0.01"},
    }
    print(result)
    if not QUICK:
        print("wrote", write_result("distill", result))


if __name__ == "__main__":
    main()
