"""A distillation that writes, for its process, the examples of each batch it trained on: run by the
data-parallel test, alone and under torchrun. argv: the DistillConfig's settings as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import ClassVar

from alambic.distill import run
from alambic.distill.run import DistillConfig, distill


class RecordingCollator(run.LeftPaddingCollator):
    batches: ClassVar[list[list[list[int]]]] = []

    def __call__(self, examples):
        RecordingCollator.batches.append([example["input_ids"] for example in examples])
        return super().__call__(examples)


if __name__ == "__main__":
    run.LeftPaddingCollator = RecordingCollator
    config = DistillConfig.from_mapping(json.loads(sys.argv[1]))
    distill(config)
    rank = os.environ.get("RANK", "0")
    (Path(config.out) / f"batches-{rank}.json").write_text(json.dumps(RecordingCollator.batches))
