"""`alambic evaluate`: the teacher, each distilled student and the undistilled student side by side: fidelity
to the teacher on held-out answers, GSM8K accuracy, size, generation speed on this machine, training cost."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alambic.distill.data import ExampleBuilder, TeacherAnswers
from alambic.evaluate.fidelity import Fidelity, fidelities
from alambic.evaluate.gsm8k import Accuracy, Problem, gsm8k_accuracy
from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import TransformersBackend
from alambic.models.loading import LoadedModel, load_model
from alambic.models.student import parameter_count, student_from_teacher


@dataclass
class ModelScore:
    name: str
    role: str  # teacher, student, undistilled
    parameters: int
    disk_bytes: int
    fidelity: Fidelity | None = None
    gsm8k: Accuracy | None = None
    tokens_per_s: float | None = None
    training: dict | None = None  # distill.json's cost: steps, tokens seen, CPU seconds
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    def row(self) -> dict:
        """The flat figures of the report's table."""
        fid, acc, cost = self.fidelity, self.gsm8k, self.training or {}
        return {
            "model": self.name,
            "role": self.role,
            "params_M": self.parameters / 1e6,
            "disk_MB": self.disk_bytes / 1e6,
            "agreement": fid and fid.agreement,
            "kl": fid and fid.kl,
            "perplexity": fid and fid.perplexity,
            "gsm8k": acc and acc.accuracy,
            "tokens_per_s": self.tokens_per_s,
            "train_cpu_s": cost.get("cpu_seconds"),
            "train_tokens": cost.get("tokens_seen"),
        }


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = 200
    heldout_fraction: float | None = None  # None: the fraction the student was trained with (else 0.1)
    speed_streams: int = 8
    speed_tokens: int = 64
    gsm8k_max_tokens: int = 256


def evaluate(
    teacher_spec: str,
    students: list[str],
    data: str | Path,
    *,
    gsm8k: list[Problem] | None = None,
    settings: EvaluationSettings = EvaluationSettings(),
) -> list[ModelScore]:
    teacher = load_model(teacher_spec)
    runs = {student: _distill_summary(student) for student in students}
    fraction = settings.heldout_fraction or next(
        (run["config"]["heldout_fraction"] for run in runs.values() if run), 0.1
    )
    heldout = TeacherAnswers.load(data, fraction).heldout[: settings.max_examples]
    builder = ExampleBuilder(teacher.tokenizer)
    examples = [builder.example(row, targets=False) for row in heldout]
    models: list[tuple[LoadedModel, str, int, dict | None]] = [(teacher, "teacher", _state_bytes(teacher), None)]
    baselines: set[str] = set()
    for student, run in runs.items():
        models.append((load_model(student), "student", _directory_bytes(Path(student)), run))
        layers = run and run["config"]["student"] is None and run["config"]["student_layers"]
        if layers and str(layers) not in baselines:  # the same cut of the teacher, untrained
            baselines.add(str(layers))
            baseline = student_from_teacher(teacher, layers)
            models.append((baseline, "undistilled", _state_bytes(baseline), None))
    fidelity = fidelities({m.name: m.model for m, *_ in models}, teacher.model, examples) if examples else {}
    return [
        ModelScore(
            name=model.name,
            role=role,
            parameters=parameter_count(model.model),
            disk_bytes=disk_bytes,
            fidelity=fidelity.get(model.name),
            gsm8k=gsm8k_accuracy(model, gsm8k, max_tokens=settings.gsm8k_max_tokens) if gsm8k else None,
            tokens_per_s=generation_speed(model, settings.speed_streams, settings.speed_tokens),
            training=run and {k: run[k] for k in ("steps", "tokens_seen", "cpu_seconds", "wall_seconds")},
            loss_curve=_loss_curve(Path(model.name)) if run else [],
        )
        for model, role, disk_bytes, run in models
    ]


def _distill_summary(student: str) -> dict | None:
    path = Path(student) / "distill.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _loss_curve(directory: Path) -> list[tuple[int, float]]:
    path = directory / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(line["step"], line["loss"]) for line in lines if "loss" in line]


def generation_speed(model: LoadedModel, streams: int = 8, tokens: int = 64) -> float:
    """Aggregate decode tokens/s for `streams` concurrent requests of `tokens` tokens each."""
    engine = GenerationEngine(TransformersBackend(model), max_batch_size=streams)
    prompt = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about the sea."}], add_generation_prompt=True, return_dict=False
    )
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, seed=0)
    try:
        engine.generate([GenerationRequest(prompt, SamplingParams(max_tokens=2))])  # warm-up
        started = time.perf_counter()
        engine.generate([GenerationRequest(prompt, params, n=streams)])
        return streams * tokens / (time.perf_counter() - started)
    finally:
        engine.close()


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def _state_bytes(model: LoadedModel) -> int:
    """What the weights take saved as they are held (safetensors stores tied weights once)."""
    unique = {id(p): p for p in model.model.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique)


def scores_as_json(scores: list[ModelScore]) -> list[dict]:
    return [{**asdict(score), "row": score.row()} for score in scores]
