import json

import pytest
import torch

from ablate.distill.checkpoint import load_checkpoint
from ablate.distill.config import TrainConfig
from ablate.distill.layer_map import resolve_layer_map
from ablate.distill.models import check_compatible
from ablate.distill.train import train
from ablate.errors import TrainError
from tests.distill.conftest import SEQ, slice_prune, small_config, text_batches, tiny_model


def config(**overrides) -> TrainConfig:
    return small_config(12, **overrides)


class Stop(Exception):
    pass


def stop_at(step):
    def on_step(metrics):
        if metrics["step"] == step:
            raise Stop

    return on_step


@pytest.fixture(scope="module")
def data():
    return text_batches(SEQ, 20)  # 20 sequences: 12 steps x 8 cover the split ~5 times


@pytest.mark.parametrize("loss", ["kld", "kld+intermediate", "scratch"])
def test_an_interrupted_run_resumes_to_the_same_losses(tmp_path, data, loss):
    teacher = tiny_model(seed=0)
    full_student = slice_prune(teacher, hidden=48, ffn=64)
    cfg = config(loss=loss)
    full = train(full_student, teacher, data, cfg, tmp_path / "full")
    assert full.resumed_from_step is None and len(full.loss_curve) == 12

    student = slice_prune(teacher, hidden=48, ffn=64)
    with pytest.raises(Stop):
        train(student, teacher, data, cfg, tmp_path / "cut", on_step=stop_at(6))
    assert load_checkpoint(tmp_path / "cut")["step"] == 4  # the last checkpoint before the stop
    fresh = slice_prune(teacher, hidden=48, ffn=64)  # a new process would start from the pruned weights again
    resumed = train(fresh, teacher, data, cfg, tmp_path / "cut")
    assert resumed.resumed_from_step == 4
    assert resumed.loss_curve == full.loss_curve  # bit-identical on CPU
    assert resumed.lr_curve == full.lr_curve
    for (name, a), (_, b) in zip(full_student.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_finished_run_is_not_redone_and_loads_its_weights(tmp_path, data):
    teacher = tiny_model(seed=0)
    student = slice_prune(teacher, ffn=64)
    first = train(student, teacher, data, config(tokens=3 * 8 * SEQ), tmp_path)
    again_student = slice_prune(teacher, ffn=64)
    steps = []
    again = train(again_student, teacher, data, config(tokens=3 * 8 * SEQ), tmp_path, on_step=steps.append)
    assert steps == [] and again.resumed_from_step == 3 and again.loss_curve == first.loss_curve
    assert torch.equal(again_student.lm_head.weight, student.lm_head.weight)
    saved = json.loads((tmp_path / "train_result.json").read_text())
    assert saved["steps"] == 3 and saved["tokens"] == 3 * 8 * SEQ


def test_a_checkpoint_of_another_run_is_refused(tmp_path, data):
    teacher = tiny_model(seed=0)
    train(slice_prune(teacher, ffn=64), teacher, data, config(tokens=2 * 8 * SEQ), tmp_path)
    with pytest.raises(TrainError, match=r"different run \(differs in: lr\)"):
        train(slice_prune(teacher, ffn=64), teacher, data, config(tokens=2 * 8 * SEQ, lr=1e-3), tmp_path)


def test_a_learning_rate_that_explodes_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, data):
    teacher = tiny_model(seed=0)
    student = slice_prune(teacher, ffn=64)
    cfg = config(grad_clip=None, checkpoint_every=1, tokens=20 * 8 * SEQ)

    def blow_up_after_step_5(metrics):
        # What a far too high learning rate does, made deterministic: the weights become non-finite
        # after step 5 (whose checkpoint is already written), so step 6's loss is not finite.
        if metrics["step"] == 5:
            with torch.no_grad():
                student.lm_head.weight.mul_(float("inf"))

    with pytest.raises(TrainError, match=r"training diverged at step (\d+) of 20") as info:
        train(student, teacher, data, cfg, tmp_path, on_step=blow_up_after_step_5)
    bad_step = int(info.value.args[0].split("step ")[1].split(" ")[0])
    assert bad_step == 6
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == bad_step - 1 and len(ckpt["history"]["loss"]) == bad_step - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert "lower lr" in str(info.value)


def test_mismatched_vocabularies_and_tokenizers_are_refused(tmp_path, data):
    teacher = tiny_model(seed=0)
    other = tiny_model(seed=0, vocab_size=300)
    with pytest.raises(TrainError, match=r"vocabulary \(300 logits\) differs from the teacher's \(260\)"):
        train(other, teacher, data, config(), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    with pytest.raises(TrainError, match="tokenizer differs"):
        check_compatible(teacher, teacher, config(), Tok({"a": 0, "b": 1}), Tok({"a": 1, "b": 0}))
    check_compatible(teacher, teacher, config(), Tok({"a": 0}), Tok({"a": 0}))
    with pytest.raises(TrainError, match="needs a teacher"):
        train(teacher, None, data, config(), tmp_path)
    with pytest.raises(TrainError, match="seq_len is 32"):
        train(teacher, teacher, text_batches(16, 4), config(), tmp_path)


def test_intermediate_loss_needs_a_pruned_child_or_an_explicit_mapping(tmp_path, data):
    teacher = tiny_model(seed=0)
    wider = tiny_model(seed=1, hidden_size=96, intermediate_size=64)
    with pytest.raises(TrainError, match=r"not a pruned child of this teacher \(hidden_size 96 > 64\)"):
        train(wider, teacher, data, config(loss="kld+intermediate"), tmp_path)
    cfg = config(loss="kld+intermediate", intermediate_layers=[(0, 0), (3, 3)], tokens=2 * 8 * SEQ)
    result = train(wider, teacher, data, cfg, tmp_path / "mapped")
    assert len(result.loss_curve) == 2
    with pytest.raises(TrainError, match="out of range"):
        train(
            wider,
            teacher,
            data,
            config(loss="kld+intermediate", intermediate_layers=[(0, 9)]),
            tmp_path / "x",
        )
    # Depth-pruned children: evenly spaced by default, or the pruning's kept layers when recorded.
    shallow = tiny_model(seed=0, num_hidden_layers=2)
    assert resolve_layer_map(shallow, teacher, None) == [(0, 0), (1, 3)]
    shallow.config.ablate_pruning = {"kept_layers": [0, 2]}
    assert resolve_layer_map(shallow, teacher, None) == [(0, 0), (1, 2)]
    assert resolve_layer_map(slice_prune(teacher, hidden=48), teacher, None) == [(i, i) for i in range(4)]


def test_training_leaves_global_state_and_the_teacher_alone(tmp_path, data):
    teacher = tiny_model(seed=0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    grad_mode = torch.is_grad_enabled()
    a = train(
        slice_prune(teacher, ffn=64),
        teacher,
        data,
        config(loss="scratch", tokens=2 * 8 * SEQ),
        tmp_path / "a",
    )
    assert torch.equal(torch.get_rng_state(), rng) and torch.is_grad_enabled() == grad_mode
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    # A second trial in the same process, same seed: the same numbers (scratch init is seeded).
    b = train(
        slice_prune(teacher, ffn=64),
        teacher,
        data,
        config(loss="scratch", tokens=2 * 8 * SEQ),
        tmp_path / "b",
    )
    assert a.loss_curve == b.loss_curve
    c = train(
        slice_prune(teacher, ffn=64),
        teacher,
        data,
        config(loss="scratch", tokens=2 * 8 * SEQ, seed=1),
        tmp_path / "c",
    )
    assert c.loss_curve != a.loss_curve


def test_eval_fn_runs_every_n_steps_and_at_the_end(tmp_path, data):
    teacher = tiny_model(seed=0)
    calls, seen = [], []

    def eval_fn(model):
        calls.append(model.training)
        return {"x": 1.0}

    result = train(
        slice_prune(teacher, ffn=64), teacher, data, config(tokens=5 * 8 * SEQ), tmp_path,
        on_step=seen.append, eval_fn=eval_fn, eval_every=2,
    )  # fmt: skip
    assert [e["step"] for e in result.evals] == [2, 4, 5]
    assert calls == [False, False, False]  # evaluated in eval mode
    assert [m.get("eval_x") for m in seen] == [None, 1.0, None, 1.0, 1.0]
