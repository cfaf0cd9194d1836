"""One alignment stage on TRL: SFTTrainer for `sft`, DPOTrainer for `dpo` and `ipo` (its sigmoid and IPO
losses), with the stage's budget, schedule and batch sizes, resumable from its work folder.

The reference model of a preference stage is the model the stage starts from (TRL copies it when no
reference is given), as in the Minitron instruct recipe where each stage starts from the last.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.align.metrics import encode
from ablate.spec.align import DPO_LOSS, PREFERENCE_METHODS

StepCallback = Callable[[dict[str, Any]], None]
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
_SAMPLE = 256  # records whose token counts estimate a stage's training tokens


@dataclass
class AlignResult:
    steps: int
    examples: int
    tokens: int
    flops: float
    seconds: float
    resumed_from_step: int
    loss_curve: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def steps_for(settings: Mapping[str, Any], train_records: int) -> int:
    """Optimizer steps of the budget: `examples` (or one pass over the training split) / global_batch."""
    examples = settings.get("examples") or train_records
    return max(1, math.ceil(examples / settings["global_batch"]))


def tokens_per_example(tokenizer: Any, records: list[dict], method: str, max_length: int) -> float:
    """Mean tokens of one training example (chosen and rejected both count for a preference pair)."""
    sample = records[:_SAMPLE]
    answers = ("chosen", "rejected") if method in PREFERENCE_METHODS else ("completion",)
    total = sum(len(encode(tokenizer, r["prompt"], r[a], max_length)[0]) for r in sample for a in answers)
    return total / max(len(sample), 1)


def trl_config(settings: Mapping[str, Any], steps: int, work: Path, seed: int, use_cpu: bool) -> Any:
    """TRL's config for the stage: its budget and optimiser settings, checkpoints for resuming, no
    reporting integrations (ablate records and mirrors the results itself)."""
    common = dict(
        output_dir=str(work),
        max_steps=steps,
        per_device_train_batch_size=settings["micro_batch"],
        gradient_accumulation_steps=settings["global_batch"] // settings["micro_batch"],
        learning_rate=settings["lr"],
        lr_scheduler_type=_SCHEDULERS[settings["schedule"]],
        warmup_steps=settings["warmup_steps"],
        weight_decay=settings["weight_decay"],
        max_length=settings["max_length"],
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings["checkpoint_every"],
        save_total_limit=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=False,  # trains in the checkpoint's dtype, as distillation does
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if settings["method"] in PREFERENCE_METHODS:
        from trl import DPOConfig

        return DPOConfig(**common, beta=settings["beta"], loss_type=[DPO_LOSS[settings["method"]]])
    from trl import SFTConfig

    return SFTConfig(**common, completion_only_loss=True, packing=False)


def align_model(
    model: Any,
    tokenizer: Any,
    settings: Mapping[str, Any],
    train_records: list[dict],
    work: Path,
    seed: int,
    on_step: StepCallback | None = None,
) -> AlignResult:
    """Train `model` in place for one stage; returns what happened (a resumed run counts its whole budget)."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    steps = steps_for(settings, len(train_records))
    work.mkdir(parents=True, exist_ok=True)
    config = trl_config(settings, steps, work, seed, use_cpu=not torch.cuda.is_available())
    datasets.disable_progress_bars()  # TRL's tokenizing bars: ablate's progress is the step line
    dataset = datasets.Dataset.from_list(train_records)
    started = time.perf_counter()

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - TrainerCallback's
            if on_step and logs and "loss" in logs:
                on_step({"step": state.global_step, "steps": state.max_steps, "loss": float(logs["loss"])})

    if settings["method"] in PREFERENCE_METHODS:
        from trl import DPOTrainer

        reference = copy.deepcopy(model).eval()  # the model this stage starts from, frozen
        for p in reference.parameters():
            p.requires_grad_(False)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Progress()],
        )
    else:
        from trl import SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Progress()],
        )
    trainer.remove_callback(PrinterCallback)  # its log dicts on stdout: progress goes through on_step
    checkpoint = get_last_checkpoint(str(work)) if work.is_dir() else None
    resumed = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0
    trainer.train(resume_from_checkpoint=checkpoint)
    examples = steps * settings["global_batch"]
    tokens = int(
        examples * tokens_per_example(tokenizer, train_records, settings["method"], settings["max_length"])
    )
    params = sum(p.numel() for p in model.parameters())
    # forward + backward of the policy (6N per token); a preference stage also runs the reference forward (2N)
    flops = float((8 if settings["method"] in PREFERENCE_METHODS else 6) * params * tokens)
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return AlignResult(
        steps=steps,
        examples=examples,
        tokens=tokens,
        flops=flops,
        seconds=round(time.perf_counter() - started, 3),
        resumed_from_step=resumed,
        loss_curve=losses,
    )
