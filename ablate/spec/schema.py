"""The spec's pydantic models: the single place where every field, default and allowed value lives.

Unknown keys are refused everywhere (extra="forbid"); values are checked here, relations between
fields in `Spec`'s validators, and anything that needs the teacher's architecture in spec/validate.py.
docs/spec-reference.md is generated from these models (`make docs`).
Every number is finite (allow_inf_nan=False on every model: `.inf`, `.nan` and `1e309` are refused,
they would reach the records as invalid JSON) and bounded by spec/limits.py (a count of 10^400
would overflow the plan's float arithmetic).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    field_validator,
    model_serializer,
    model_validator,
)

from ablate.spec.budget import fits_one_step, tokens_per_step
from ablate.spec.limits import (
    MAX_COUNT,
    MAX_PATH_CHARS,
    MAX_RATE,
    MAX_RESOURCES,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TRIALS,
)
from ablate.spec.units import parse_tokens

# The one config of every model: unknown keys refused, defaults validated, numbers finite.
CONFIG = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
TokenCount = Annotated[int, BeforeValidator(parse_tokens)]
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]  # batch sizes, lengths, dimensions, steps
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
AUTO_EVALS = 4  # held-out evaluations during a distillation whose distill.eval_every is unset
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Rate = Annotated[float, Field(ge=0, le=MAX_RATE)]  # learning rates, weight decay


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("a NUL character in a name or path (expected printable text)")
    return text


# A file name, path, URL or model id: the OS refuses longer ones and NUL bytes (with an exception).
PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_no_nul)]
Aggregation = Literal["mean", "l2", "var"]
Loss = Literal["kld", "ce", "kld+intermediate", "scratch"]
Schedule = Literal["cosine", "linear", "constant"]
LOSSES: tuple[str, ...] = get_args(Loss)
REINIT_LOSSES = frozenset({"scratch"})  # losses that re-initialise the pruned student before training
SCHEDULES: tuple[str, ...] = get_args(Schedule)
TARGET_AXES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
SEARCH = "search"  # targets.NAME.from: the search's winner
# Settings of how a training run uses memory and compute, not of what it computes (same losses up to
# rounding): left out of trial keys and stage hashes while at their defaults (ablate.spec.sweep), so
# adding them changed no existing key.
MEMORY_FIELDS = ("logit_chunk", "activation_checkpointing", "compile")


def _logit_chunk(value: Any) -> Any:
    """One clear message for a bad chunk size (not one per member of the union)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT):
        return value
    raise ValueError(f"expected a positive number of positions or 'auto' (got {value!r})")


LogitChunk = Annotated[
    PositiveInt | Literal["auto"],
    BeforeValidator(_logit_chunk),
    Field(
        description="positions per chunk of the LM head and logit loss (at most chunk x vocabulary logits "
        "exist at once); auto: about 128 MiB of fp32 logits on a CPU, 2 GiB on a GPU (256 and 4096 positions at a "
        "vocabulary of 131,072), where bigger chunks are faster (ablate.distill.chunking)"
    ),
]
CHECKPOINTING_HELP = (
    "recompute each decoder layer's activations in backward (non-reentrant checkpointing): keeps only "
    "each layer's input, for about one extra forward pass of compute"
)
COMPILE_HELP = (
    "compile each decoder layer of the student and the teacher with torch.compile (Inductor) before "
    "wrapping them: fused norms, SwiGLU and rotary, the same losses up to rounding; the first steps pay "
    "the compilation (seconds to minutes). Not with loss kld+intermediate, whose hooks inside the layers "
    "compiled code would skip"
)


class Strict(BaseModel):
    """Sections default with default_factory: a default instance would be deep-copied on every use,
    most of the time of validating a sweep of thousands of trials."""

    model_config = CONFIG


class Correction(Strict):
    """Teacher correction: fine-tune the teacher on the distillation data first (paper: LR 1/5, 120 warm-up)."""

    tokens: TokenCount
    lr: Rate = Field(2e-5, gt=0)
    min_lr: Rate = 0.0
    warmup_steps: Count = 120
    global_batch: PositiveInt | None = None  # None: same as distill
    micro_batch: PositiveInt | None = None
    logit_chunk: LogitChunk | None = Field(
        None, description="None: same as distill (see distill.logit_chunk)"
    )
    activation_checkpointing: bool | None = Field(
        None, description="None: same as distill; " + CHECKPOINTING_HELP
    )
    compile: bool | None = Field(None, description="None: same as distill; " + COMPILE_HELP)


class Teacher(Strict):
    model: PathText = Field(description="builtin:NAME | local HF directory | HF id (local cache)")
    config: PathText | None = Field(
        None, description="config.json to plan from when the weights are not here"
    )
    correction: Correction | None = None


class DataSource(Strict):
    """One corpus of a weighted blend (Megatron's --data-path W1 P1 W2 P2)."""

    path: PathText = Field(
        description="builtin:pydoc | .txt/.jsonl/.jsonl.gz/.parquet file, folder or glob | hf:ORG/NAME[:config][@split]"
    )
    weight: PositiveFloat = Field(
        1.0, le=MAX_RATE, description="share of the training blend (normalised over sources)"
    )
    text_field: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)] = Field(
        "text", description="JSONL field / Parquet or dataset column holding the text"
    )


class Data(Strict):
    corpus: PathText | None = Field(
        "builtin:pydoc", description="shorthand for sources: [{path: CORPUS, weight: 1}]"
    )
    sources: Annotated[list[DataSource], Field(min_length=1, max_length=MAX_TRIALS)] | None = Field(
        None, description="a weighted blend of corpora, instead of corpus (not both)"
    )
    seq_len: PositiveInt = 128
    eval_tokens: TokenCount = 8000

    @model_validator(mode="after")
    def _one_form(self) -> Data:
        if self.sources is not None and "corpus" in self.model_fields_set and self.corpus is not None:
            raise ValueError(
                "data.corpus and data.sources are both set; keep one (corpus: X is sources: [{path: X, weight: 1}])"
            )
        if self.sources is None and self.corpus is None:
            raise ValueError("data needs a corpus or a list of sources")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Only the form in use is dumped: a spec without sources hashes as it did before they existed."""
        dumped = handler(self)
        dumped.pop("corpus" if self.sources is not None else "sources", None)
        return dumped


class Calibration(Strict):
    samples: PositiveInt = 32
    batch_size: PositiveInt = 8


# Fields added after specs were run: dumped (and so in trial keys and stage hashes) only when they
# differ from their defaults, so adding them moved no existing key.
_LATE_FIELDS = {"head_aggregation": "token_l2", "contiguous_metric": "lm_loss"}


def _drop_late_defaults(dumped: dict[str, Any]) -> dict[str, Any]:
    for name, default in _LATE_FIELDS.items():
        if dumped.get(name, None) == default:
            dumped.pop(name)
    return dumped


class WidthImportance(Strict):
    method: Literal["activation", "magnitude", "random"] = "activation"
    batch_agg: Aggregation = "l2"
    seq_agg: Aggregation = "mean"
    mlp_site: Literal["down_proj_input", "gate_up"] = "down_proj_input"
    head_aggregation: Literal["token_l2", "channel_l2"] = Field(
        "token_l2",
        description="attention heads: token_l2 = L2 over the head's channels per token, then seq_agg, then "
        "batch_agg; channel_l2 = seq_agg and batch_agg per channel, then L2 over the head's channels "
        "(Model Optimizer's order). One-shot and retrained figures on SmolLM2-135M, and why token_l2 is "
        "the default: docs/method.md",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        return _drop_late_defaults(handler(self))


class DepthImportance(Strict):
    method: Literal["block_importance", "lm_loss", "contiguous"] = Field(
        "block_importance",
        description="block_importance: 1 - mean cos(layer input, output) per layer (Model Optimizer's only "
        "depth score); lm_loss: the LM-loss increase when the layer alone is skipped; contiguous: the best "
        "block of consecutive layers to drop, scored by contiguous_metric",
    )
    contiguous_metric: Literal["lm_loss", "kl_to_teacher"] = Field(
        "lm_loss",
        description="method contiguous: what scores a model with a block of layers skipped, its LM loss or "
        "its KL(teacher || it) on the calibration set; lower is kept. Model Optimizer has Block Importance "
        "only; paper 2 used a downstream task (not offered: one lm-eval run per candidate block)",
    )

    @model_validator(mode="after")
    def _metric_needs_contiguous(self) -> DepthImportance:
        if self.contiguous_metric != "lm_loss" and self.method != "contiguous":
            raise ValueError(
                f"contiguous_metric {self.contiguous_metric} is read only by method contiguous (method is "
                f"{self.method}); set method: contiguous or drop contiguous_metric"
            )
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        return _drop_late_defaults(handler(self))


class Importance(Strict):
    width: WidthImportance = Field(default_factory=WidthImportance)
    depth: DepthImportance = Field(default_factory=DepthImportance)


class Target(Strict):
    """A student shape: any subset of the prunable axes; the others stay as in the teacher. Or
    `{from: search}`: the shape the spec's search chooses, whose trials run once it has chosen."""

    model_config = ConfigDict(**CONFIG, populate_by_name=True)  # `from` is a keyword: from_ inside

    hidden_size: PositiveInt | None = None
    intermediate_size: PositiveInt | None = None
    num_attention_heads: PositiveInt | None = None
    num_hidden_layers: PositiveInt | None = None
    from_: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None,
        alias="from",
        description="search: the winner of the spec's search section (its trials run after the search); "
        "a target's name: pruned from that target's distilled student instead of the teacher, a round of "
        "iterative compression (docs/search.md)",
    )
    chain: bool = Field(
        False,
        description="with from: TARGET, that distilled student is also this target's teacher (a chain, "
        "12B -> 8B -> 4B) instead of the spec's teacher (rounds)",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Target:
        if self.from_ == SEARCH and self.axes():
            raise ValueError(
                f"a target from the search takes its shape from the winner (drop {', '.join(self.axes())}, "
                "or drop from)"
            )
        if self.from_ != SEARCH and not self.axes():
            raise ValueError(f"a target must set at least one of {', '.join(TARGET_AXES)}, or from: search")
        if self.chain and self.from_ in (None, SEARCH):
            raise ValueError("chain needs from: TARGET (the target whose distilled student teaches this one)")
        return self

    @property
    def source(self) -> str | None:
        """The target this one is pruned from (a round or a chain link); None: from the teacher."""
        return None if self.from_ in (None, SEARCH) else self.from_

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """As written: `from` (not the attribute's name), and absent from a target with axes."""
        out = handler(self)
        origin = out.pop("from_", None)
        if not out.get("chain"):
            out.pop("chain", None)
        return out if origin is None else {**out, "from": origin}

    def axes(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in TARGET_AXES if getattr(self, k) is not None}


class Distill(Strict):
    # These defaults are also the trainer's (ablate.distill.config.TrainConfig) and the CLI's.
    loss: Loss = "kld"
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE)
    tokens: TokenCount
    lr: Rate = Field(1e-4, gt=0)
    min_lr: Rate = 4.5e-7
    warmup_steps: Count = 0
    schedule: Schedule = "cosine"
    global_batch: PositiveInt = 8
    micro_batch: PositiveInt = 4
    grad_clip: PositiveFloat | None = 1.0
    weight_decay: Rate = 0.0
    checkpoint_every: PositiveInt = 50
    eval_every: Count | None = Field(
        None,
        description="held-out evaluation every N optimizer steps (the report's curve over tokens); 0: none; "
        f"unset: about {AUTO_EVALS} over the run (none under {AUTO_EVALS} steps; ce and scratch trials without "
        "the KL to the teacher, which would load it)",
    )
    intermediate_layers: list[tuple[Count, Count]] | None = Field(
        None, description="(student layer, teacher layer) pairs for kld+intermediate; default: evenly spaced"
    )
    logit_chunk: LogitChunk = "auto"
    activation_checkpointing: bool = Field(False, description=CHECKPOINTING_HELP)
    compile: bool = Field(False, description=COMPILE_HELP)

    @model_validator(mode="after")
    def _relations(self) -> Distill:
        if self.compile and self.loss == "kld+intermediate":
            raise ValueError(
                "compile: true does not work with loss kld+intermediate (the hooks that take the layers' "
                "hidden states inside compiled layers would be skipped); set compile: false"
            )
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch}) "
                "(gradient accumulation runs whole micro-batches)"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


class Evaluation(Strict):
    """Downstream benchmarks (lm-eval) run on every trial's student, on the teacher and on the build."""

    tasks: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="lm-eval task, group or tag names, or folders of task YAMLs (pydoc_cloze ships with ablate)",
    )
    limit: float | None = Field(
        None,
        description="per task: a count of documents (1, 2, ...), or a fraction below 1 of them; None: all",
    )
    num_fewshot: Count | None = Field(None, description="None: each task's own default")
    batch_size: PositiveInt = 8

    @field_validator("limit")
    @classmethod
    def _limit_is_count_or_fraction(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if not value > 0 or (value >= 1 and value != int(value)) or value > MAX_COUNT:
            raise ValueError("expected a whole number of documents (1, 2, ...) or a fraction between 0 and 1")
        return int(value) if value >= 1 else value


class Sweep(Strict):
    # One grid, or a list of grids whose trials are pooled (a main grid plus side studies, say);
    # a trial two grids both produce runs once.
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    max_trials: int = Field(1000, gt=0, le=MAX_TRIALS, description="refuse a grid larger than this")

    def grids(self) -> list[dict[str, list[Any]]]:
        return list(self.grid) if isinstance(self.grid, list) else [self.grid]

    def axes(self) -> list[str]:
        """Every swept path over all grids, in first-seen order."""
        return list(dict.fromkeys(axis for grid in self.grids() for axis in grid))


class TrialResources(Strict):
    """What one trial gets: `cpu` and `gpu` are totals for the trial, split evenly over its workers."""

    cpu: float = Field(1.0, gt=0, le=MAX_RESOURCES)
    gpu: float = Field(0.0, ge=0, le=MAX_RESOURCES)
    workers: int = Field(1, gt=0, le=MAX_RESOURCES, description="processes per trial (Ray Train workers)")
    strategy: Literal["single", "ddp", "fsdp"] = Field(
        "single",
        description="single process; DDP (model fits one device); FSDP2 (parameters, gradients, optimizer state sharded)",
    )

    @model_validator(mode="after")
    def _whole_devices(self) -> TrialResources:
        if self.strategy == "single" and self.workers != 1:
            raise ValueError(
                f"strategy single runs one process (got workers {self.workers}; expected ddp or fsdp for more)"
            )
        if self.workers > 1 or self.strategy != "single":
            per_worker = self.gpu / self.workers
            if self.gpu and not float(per_worker).is_integer():
                raise ValueError(
                    f"gpu {self.gpu} over {self.workers} workers is {per_worker:g} per worker "
                    "(expected a whole number of GPUs per worker)"
                )
        return self

    @property
    def gpu_per_worker(self) -> float:
        return self.gpu / self.workers

    @property
    def cpu_per_worker(self) -> float:
        return self.cpu / self.workers


class SharedResources(Strict):
    """What a one-process shared stage (importance, pruning, evaluation of the teacher's children) gets.
    Unset: one worker's share of the trial. More GPUs than one let a teacher that does not fit one GPU
    be split over several (they must be on one node)."""

    cpu: float | None = Field(None, gt=0, le=MAX_RESOURCES)
    gpu: float | None = Field(None, ge=0, le=MAX_RESOURCES)


class Resources(Strict):
    trial: TrialResources = Field(default_factory=TrialResources)
    shared: SharedResources = Field(default_factory=SharedResources)
    max_concurrent: PositiveInt = 2
    max_failures: Count = 0
    asha: bool = False


class Tracking(Strict):
    db: PathText = "sqlite:///.ablate/ablate.db"
    mlflow: PathText = "sqlite:///.ablate/mlflow.db"
    artifacts: PathText = ".ablate/artifacts"


class Build(Strict):
    trial: str = Field(
        "best",
        description="best: the report's best trial; search: the winner of the spec's search (see "
        "docs/search.md); or a trial key",
    )
    tokens: TokenCount | None = None
    formats: list[Literal["hf", "trtllm-bf16", "trtllm-fp8"]] = Field(default_factory=lambda: ["hf"])


class ReportSettings(Strict):
    """How `ablate report` judges the trials. Known metrics (lm_loss, perplexity, kl_to_teacher,
    top1_agreement, ...) have a direction and margin in ablate/report/metrics.py; any other metric must
    declare `higher_is_better`."""

    metric: str = Field("lm_loss", min_length=1, max_length=128)
    higher_is_better: bool | None = None
    margin: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="differences within this count as ties/equivalent"
    )


from ablate.spec.align import Align  # noqa: E402  (its stages use the shared field types above)
from ablate.spec.search import Search  # noqa: E402  (its retraining overrides are Distill's fields)


class Spec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    description: str = ""
    teacher: Teacher
    data: Data = Field(default_factory=Data)
    calibration: Calibration = Field(default_factory=Calibration)
    importance: Importance = Field(default_factory=Importance)
    targets: dict[str, Target] = Field(min_length=1)
    distill: Distill
    sweep: Sweep = Field(default_factory=Sweep)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    eval: Evaluation = Field(default_factory=Evaluation)
    build: Build = Field(default_factory=Build)
    report: ReportSettings = Field(default_factory=ReportSettings)
    search: Search | None = Field(
        None, description="search the shapes that meet a parameter budget (docs/search.md); None: no search"
    )
    align: Align | None = Field(
        None, description="instruction tuning and preference stages after distillation (docs/align.md); None: none"
    )

    @model_validator(mode="after")
    def _batch_divides_over_workers(self) -> Spec:
        workers, micro = self.resources.trial.workers, self.distill.micro_batch
        if self.distill.global_batch % (workers * micro):
            raise ValueError(
                f"distill.global_batch ({self.distill.global_batch}) must be a multiple of resources.trial.workers x "
                f"distill.micro_batch ({workers} x {micro} = {workers * micro}), so every worker runs whole micro-batches"
            )
        correction = self.teacher.correction
        if correction is not None:  # corrected on the trial's workers too
            batch = correction.global_batch or self.distill.global_batch
            micro = correction.micro_batch or self.distill.micro_batch
            if batch % (workers * micro):
                raise ValueError(
                    f"teacher.correction's global batch ({batch}) must be a multiple of resources.trial.workers x "
                    f"its micro-batch ({workers} x {micro} = {workers * micro}), so every worker runs whole micro-batches"
                )
        return self

    @model_validator(mode="after")
    def _distill_fits_one_step(self) -> Spec:
        step_tokens = tokens_per_step(self.distill.global_batch, self.data.seq_len)
        if not fits_one_step(self.distill.tokens, self.distill.global_batch, self.data.seq_len):
            raise ValueError(
                f"distill.tokens ({self.distill.tokens}) is less than one optimizer step "
                f"(global_batch {self.distill.global_batch} x seq_len {self.data.seq_len} = {step_tokens} tokens)"
            )
        return self

    @model_validator(mode="after")
    def _search_build_needs_search(self) -> Spec:
        for name, target in self.targets.items():
            source = target.source
            if source is None:
                continue
            if source not in self.targets or self.targets[source].from_ == SEARCH:
                names = [n for n, t in self.targets.items() if n != name and t.from_ != SEARCH]
                raise ValueError(
                    f"target {name}: from {source!r} names no target it can be pruned from (expected one "
                    f"of: {', '.join(names) or 'none'}; or search)"
                )
            seen = [name]
            while source is not None:
                if source in seen:
                    raise ValueError(
                        f"targets {' -> '.join([*seen, source])} are pruned from each other in a cycle"
                    )
                seen.append(source)
                source = self.targets[source].source
            if self.distill.loss == "kld+intermediate":
                raise ValueError(
                    f"target {name} is pruned from target {target.source}: kld+intermediate matches hidden "
                    "states through the teacher's kept channels, which a second pruning does not track yet "
                    "(expected distill.loss kld or ce)"
                )
        found = [name for name, t in self.targets.items() if t.from_ == SEARCH]
        if found and self.search is None:
            raise ValueError(
                f"target {found[0]} is from: search, but the spec has no search section (expected a search "
                "section, or the target's axes)"
            )
        if self.build.trial == "search" and self.search is None:
            raise ValueError(
                "build.trial is 'search' but the spec has no search section (expected a search section, "
                "or build.trial: best or a trial key)"
            )
        return self


# Sections of a spec that define what a trial computes (and so its key); the rest is bookkeeping.
TRIAL_SECTIONS = ("teacher", "data", "calibration", "importance", "distill")
