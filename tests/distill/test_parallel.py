"""Several workers on Ray Train (gloo, CPU): DDP and FSDP2 give the single-process run's losses, consume
the same tokens, and a sharded checkpoint resumes as one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from ablate.distill.checkpoint import load_checkpoint
from ablate.distill.config import TrainConfig
from ablate.distill.models import meta_copy
from ablate.distill.parallel import DCP_CHECKPOINT, DCP_META, Parallel
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.models.registry import tiny_mistral_config
from tests.distill.conftest import SEQ, slice_prune, small_config, text_batches, tiny_model

pytestmark = pytest.mark.slow

STEPS = 8
STOP_AFTER = 5  # the interrupted run's last checkpoint is at step 4


def config(**overrides) -> TrainConfig:
    return small_config(STEPS, **{"micro_batch": 2, "checkpoint_every": 2, **overrides})


class Stop(Exception):
    pass


def _train_one(run: dict, parallel: Parallel) -> None:
    """One training of a worker's list: the same call on every rank, only `parallel` differs. Each worker
    leaves `worker-<rank>.json` in the run's folder; rank 0's trainer writes train_result.json there."""
    if run.get("meta") and parallel.rank:  # no weights: the trainer broadcasts rank 0's into the shards
        teacher = meta_copy(tiny_mistral_config())
        student = meta_copy(tiny_model(hidden_size=48, intermediate_size=64).config)
    else:
        teacher = tiny_model(seed=0)
        student = slice_prune(teacher, hidden=48, ffn=64)

    def on_step(metrics):
        if metrics["step"] == run.get("stop_at"):
            raise Stop

    stopped = False
    try:
        train(
            student, teacher, text_batches(SEQ, 20), config(loss=run.get("loss", "kld"), **run.get("settings", {})),
            run["out"],
            on_step=on_step, parallel=parallel,
        )  # fmt: skip
    except Stop:
        stopped = True
    facts = {"rank": parallel.rank, "world": parallel.world, "stopped": stopped}
    (Path(run["out"]) / f"worker-{parallel.rank}.json").write_text(json.dumps(facts))


def _worker(cfg: dict) -> None:
    """One Ray Train worker: every training of `cfg["runs"]` in turn, in one process group (a TorchTrainer
    costs seconds to start on two cores; a tiny training, a fraction of one)."""
    torch.set_num_threads(1)
    parallel = Parallel.current(cfg["strategy"])
    for run in cfg["runs"]:
        _train_one(run, parallel)


def run_workers(strategy: str, storage: Path, runs: dict[str, dict]) -> dict[str, dict]:
    """The trainings `runs` (name -> settings, each with its own `out` folder) on two workers of one
    TorchTrainer; name -> what rank 0 wrote (train_result.json) and whether the run was stopped."""
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules["tests"])  # workers cannot import the tests
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "strategy": strategy,
            "runs": [{**run, "out": str(run["out"])} for run in runs.values()],
        },
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"parallel-{strategy}", storage_path=str(storage)),
    )
    trainer.fit()
    results = {}
    for name, run in runs.items():
        out = Path(run["out"])
        workers = [json.loads((out / f"worker-{rank}.json").read_text()) for rank in range(2)]
        assert [w["world"] for w in workers] == [2, 2] and len({w["stopped"] for w in workers}) == 1, name
        result = out / "train_result.json"
        results[name] = {
            "stopped": workers[0]["stopped"],
            **(json.loads(result.read_text()) if result.exists() else {}),
        }
    return results


CHECKPOINTED = {"activation_checkpointing": True, "logit_chunk": 5}  # and logit chunks of 5 positions


@pytest.fixture(scope="module")
def ddp(ray_local, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("ddp")
    runs = {"whole": {}, "checkpointed": {"settings": CHECKPOINTED}}
    return run_workers("ddp", folder / "ray", {name: {**r, "out": folder / name} for name, r in runs.items()})


@pytest.fixture(scope="module")
def fsdp(ray_local, tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("fsdp")
    runs = {
        "stopped": {"stop_at": STOP_AFTER},
        "whole": {},
        "intermediate": {"loss": "kld+intermediate"},
        "meta": {"meta": True},
        "checkpointed": {"settings": CHECKPOINTED},
    }
    results = run_workers(
        "fsdp", folder / "ray", {name: {**r, "out": folder / name} for name, r in runs.items()}
    )
    return {name: {**result, "out": folder / name} for name, result in results.items()}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    teacher = tiny_model(seed=0)
    return train(
        slice_prune(teacher, hidden=48, ffn=64), teacher, text_batches(SEQ, 20), config(),
        tmp_path_factory.mktemp("single"),
    )  # fmt: skip


def assert_same_curve(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == STEPS
    for step, (a, b) in enumerate(zip(got, want, strict=True), start=1):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: {a} vs {b} (single process)"


def test_ddp_on_two_workers_gives_the_single_process_losses(ddp, single):
    metrics = ddp["whole"]
    assert metrics["tokens"] == single.tokens == STEPS * 8 * SEQ
    assert_same_curve(metrics["loss_curve"], single.loss_curve)
    # Not trivially equal: the curve moves, so a worker that trained on the wrong data would show.
    assert single.loss_curve[-1] < 0.8 * single.loss_curve[0]


def test_fsdp_on_two_workers_gives_the_same_losses_and_resumes_as_one_process(fsdp, single):
    out = fsdp["stopped"]["out"]
    assert fsdp["stopped"]["stopped"]
    saved = load_checkpoint(out)
    assert saved["sharded"] and saved["step"] == 4 and saved["workers"] == 2
    shards = sorted(p.name for p in (out / DCP_CHECKPOINT).iterdir())
    assert DCP_META in shards and sum(name.endswith(".distcp") for name in shards) == 2
    assert not (out / "checkpoint.pt").exists()

    teacher = tiny_model(seed=0)
    resumed = train(slice_prune(teacher, hidden=48, ffn=64), teacher, text_batches(SEQ, 20), config(), out)
    assert resumed.resumed_from_step == 4 and resumed.tokens == single.tokens
    assert_same_curve(resumed.loss_curve, single.loss_curve)
    # The one-process run now owns the folder: its checkpoint replaced the sharded one.
    assert (out / "checkpoint.pt").is_file() and not (out / DCP_CHECKPOINT).exists()

    finished = fsdp["whole"]
    assert not finished["stopped"] and finished["tokens"] == single.tokens
    assert_same_curve(finished["loss_curve"], single.loss_curve)


def test_intermediate_state_distillation_on_two_fsdp_workers_gives_the_same_losses(fsdp, tmp_path):
    # kld+intermediate trains a projection beside the sharded student: replicated, averaged by hand.
    teacher = tiny_model(seed=0)
    student = slice_prune(teacher, hidden=48, ffn=64)
    alone = train(student, teacher, text_batches(SEQ, 20), config(loss="kld+intermediate"), tmp_path / "one")
    metrics = fsdp["intermediate"]
    assert metrics["tokens"] == alone.tokens
    assert_same_curve(metrics["loss_curve"], alone.loss_curve)


def test_fsdp_workers_built_on_the_meta_device_train_like_whole_copies(fsdp, single):
    # Rank 1 never holds weights of its own: it builds both models on meta and gets rank 0's shards.
    metrics = fsdp["meta"]
    assert metrics["tokens"] == single.tokens
    assert_same_curve(metrics["loss_curve"], single.loss_curve)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_activation_checkpointing_and_small_logit_chunks_on_two_workers_give_the_same_losses(
    request, single, strategy
):
    # Checkpointed layers under DDP's reducer and FSDP2's per-layer hooks; logit chunks of 5 positions.
    metrics = request.getfixturevalue(strategy)["checkpointed"]
    assert metrics["tokens"] == single.tokens
    assert_same_curve(metrics["loss_curve"], single.loss_curve)


def test_a_distributed_strategy_needs_a_process_group_and_a_batch_that_divides():
    with pytest.raises(TrainError, match="strategy ddp needs a torch.distributed process group"):
        Parallel.current("ddp")
    with pytest.raises(TrainError, match=r"multiple of workers x micro_batch \(3 x 2\)"):
        train(tiny_model(), None, text_batches(SEQ, 20), config(loss="ce"), "/nonexistent",
              parallel=Parallel("ddp", 0, 3))  # fmt: skip


def test_the_workers_slices_of_a_global_batch_partition_it_in_order():
    batch = torch.arange(8 * 3).view(8, 3)
    slices = [Parallel("ddp", rank, 4).shard(batch) for rank in range(4)]
    assert [s.shape[0] for s in slices] == [2, 2, 2, 2]
    assert torch.equal(torch.cat(slices), batch)
    assert Parallel().shard(batch) is batch
    with pytest.raises(TrainError, match="does not divide over 3 workers"):
        Parallel("ddp", 0, 3).shard(batch)
