"""The spec's `align` section: instruction tuning and preference optimisation after distillation.

Mistral-NeMo-Minitron 8B Instruct was made from the distilled base by two SFT stages and two preference
stages. Here each stage is a named entry of `align.stages`, run in the order written, on TRL's
trainers (ablate/align/train.py). Each is a content-addressed stage after the trial's distill stage, so
trials that share a distilled student and a prefix of stages run that prefix once, and adding a stage
to a finished experiment runs only the new one. Imported by schema.py once its shared types exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from ablate.spec.schema import Count, PathText, PositiveInt, Rate, Schedule, Strict

AlignMethod = Literal["sft", "dpo", "ipo"]
ALIGN_METHODS: tuple[str, ...] = get_args(AlignMethod)
PREFERENCE_METHODS = frozenset({"dpo", "ipo"})  # TRL's DPOTrainer, loss_type sigmoid / ipo
# The TRL loss each preference method trains with.
DPO_LOSS = {"dpo": "sigmoid", "ipo": "ipo"}
StageName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32)]
# A named chat template that ships with ablate (ablate/align/templates.py); anything else is the template.
CHATML = "chatml"


class AlignStage(Strict):
    """One alignment stage: supervised fine-tuning on chat messages (`sft`), or preference optimisation on
    prompt/chosen/rejected pairs (`dpo`: the sigmoid DPO loss; `ipo`: the IPO loss), against the model the
    previous stage made (the distilled student for the first)."""

    method: AlignMethod
    data: PathText = Field(
        description="builtin:pydoc-instruct | builtin:pydoc-prefs | a .jsonl or .parquet file; sft needs a "
        "`messages` column (chat turns, the last one the assistant's answer), dpo/ipo `prompt`, `chosen` and "
        "`rejected` (strings or chat turns)"
    )
    examples: PositiveInt | None = Field(
        None,
        description="training examples to see (the budget: steps = examples / global_batch, repeating the "
        "set when it is larger); None: one pass over the training split",
    )
    held_out: float = Field(
        0.1, gt=0, lt=0.5, description="share of the set kept out of training for evaluation after each stage"
    )
    lr: Rate = Field(2e-5, gt=0)
    schedule: Schedule = "cosine"
    warmup_steps: Count = 0
    weight_decay: Rate = 0.0
    global_batch: PositiveInt = 8
    micro_batch: PositiveInt = 4
    max_length: PositiveInt = Field(
        512, description="tokens per example (prompt and answer); longer ones are cut"
    )
    beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="dpo/ipo: strength of the pull toward the reference (the previous model)",
    )
    checkpoint_every: PositiveInt = Field(50, description="optimizer steps between resume checkpoints")

    @model_validator(mode="after")
    def _relations(self) -> AlignStage:
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        if self.examples is not None and self.examples < self.global_batch:
            raise ValueError(
                f"examples ({self.examples}) is less than one optimizer step (global_batch {self.global_batch}); "
                f"expected at least {self.global_batch}"
            )
        default_beta = AlignStage.model_fields["beta"].default  # a recorded config carries it for every stage
        if self.beta != default_beta and self.method not in PREFERENCE_METHODS:
            raise ValueError(f"beta is read only by dpo and ipo (method is {self.method}); drop it")
        return self


class Align(Strict):
    """The alignment stages after distillation, in the order written."""

    stages: dict[StageName, AlignStage] = Field(
        min_length=1,
        max_length=16,
        description="name -> stage, run in the order written (sft1, sft2, dpo1, ...)",
    )
    chat_template: Annotated[str, Field(min_length=1, max_length=20_000)] | None = Field(
        None,
        description="None: the tokenizer's own (an error at validate time when it has none); chatml: the "
        "ChatML template that ships with ablate; anything else: a Jinja chat template (rendered sandboxed)",
    )

    def ordered(self) -> list[dict[str, Any]]:
        """The stages as a list in their order (a mapping's order is lost in a canonical hash)."""
        return [{"name": name, **stage.model_dump(mode="json")} for name, stage in self.stages.items()]
