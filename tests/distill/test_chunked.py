"""Chunked logit losses and activation checkpointing change memory, not numbers: the losses and every
gradient of the student (its LM head included) equal those of the whole-logits losses, at a 32k
vocabulary; evaluation and depth importance's LM loss give the same values; bad settings are refused."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from transformers import MistralForCausalLM

from ablate.cli import main
from ablate.distill.config import TrainConfig
from ablate.distill.logits import enable_checkpointing, final_hidden, head_loss, head_of, is_checkpointing
from ablate.distill.losses import (
    Head,
    HiddenProjection,
    chunk_positions,
    chunked_cross_entropy,
    chunked_kl_loss,
    combine_dynamic,
    cross_entropy_loss,
    intermediate_loss,
    kl_div_loss,
)
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.evaluate import evaluate
from ablate.prune.activation import _lm_loss_sum
from tests.distill.conftest import text_batches, tiny_model

VOCAB = 32_000
GEN = torch.Generator().manual_seed(0)
IDS = torch.randint(0, VOCAB, (2, 48), generator=GEN)


def pair(dtype=torch.float32):
    teacher = tiny_model(seed=0, vocab_size=VOCAB).to(dtype)
    student = tiny_model(seed=1, vocab_size=VOCAB, hidden_size=48, intermediate_size=96).to(dtype)
    return student, teacher


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def rel(got: dict, want: dict) -> float:
    """Relative difference of all gradients together: ||got - want|| / ||want||."""
    diff = torch.cat([(got[k] - want[k]).flatten().double() for k in want]).norm()
    return float(diff / torch.cat([w.flatten().double() for w in want.values()]).norm())


def unchunked(student, teacher, loss, temperature=1.0, ids=IDS):
    """Today's losses: both models' whole logits."""
    student.zero_grad()
    logits = student(input_ids=ids).logits
    if loss == "ce":
        value = cross_entropy_loss(logits, ids)
    else:
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        value = kl_div_loss(logits, t_logits, temperature)
    value.backward()
    return value.detach(), grads(student)


def chunked(student, teacher, loss, temperature=1.0, chunk=37, ids=IDS):
    student.zero_grad()
    if loss == "ce":
        value = head_loss(student, ids, lambda h, head: chunked_cross_entropy(h, head, ids, chunk))
    else:
        with torch.no_grad():
            t_final = final_hidden(teacher, ids)
        with head_of(teacher) as t_head:
            value = head_loss(
                student, ids, lambda h, head: chunked_kl_loss(h, head, t_final, t_head, temperature, chunk)
            )
    value.backward()
    return value.detach(), grads(student)


@pytest.mark.parametrize(("loss", "temperature"), [("kld", 1.0), ("kld", 2.0), ("ce", 1.0)])
def test_chunked_losses_and_gradients_equal_the_whole_logits_ones_at_a_32k_vocabulary(loss, temperature):
    student, teacher = pair()
    want, want_g = unchunked(student, teacher, loss, temperature)
    got, got_g = chunked(student, teacher, loss, temperature)
    assert abs(float(got - want)) <= 1e-6 * abs(float(want))
    assert rel(got_g, want_g) <= 1e-6
    assert got_g["lm_head.weight"].abs().sum() > 0 and set(got_g) == set(want_g)
    # The same computation rounded differently, not a different one: in float64 they agree to 1e-12.
    student, teacher = pair(torch.float64)
    want, want_g = unchunked(student, teacher, loss, temperature)
    got, got_g = chunked(student, teacher, loss, temperature, chunk=5)
    assert abs(float(got - want)) <= 1e-12 * abs(float(want))
    assert rel(got_g, want_g) <= 1e-12


def test_masks_bias_and_finite_differences_at_the_head():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=gen, requires_grad=True)
    th, tw = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen), torch.randn(11, 4, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)

    def kl(h, w, b):
        return chunked_kl_loss(h, Head(w, b), th, Head(tw), 1.5, chunk=3, mask=mask)

    def ce(h, w, b):
        return chunked_cross_entropy(h, Head(w, b), ids, chunk=4, mask=mask)

    full_kl = kl_div_loss(F.linear(h, w, b), F.linear(th, tw), 1.5, mask=mask)
    full_ce = cross_entropy_loss(F.linear(h, w, b), ids, mask=mask)
    with torch.no_grad():
        assert float(kl(h, w, b)) == pytest.approx(float(full_kl), rel=1e-12)
        assert float(ce(h, w, b)) == pytest.approx(float(full_ce), rel=1e-12)
    assert torch.autograd.gradcheck(kl, (h, w, b))
    assert torch.autograd.gradcheck(ce, (h, w, b))


def test_intermediate_distillation_trains_the_same_with_chunks_and_with_checkpointing(tmp_path):
    # kld+intermediate over the trainer: whole steps (hooks, projection, dynamic weighting, optimizer).
    teacher = tiny_model(seed=0, vocab_size=VOCAB)
    batches = text_batches(16, 8)
    base = dict(
        loss="kld+intermediate", tokens=3 * 4 * 16, global_batch=4, micro_batch=2, seq_len=16, lr=2e-3
    )

    def run(name, **extra):
        student = tiny_model(seed=1, vocab_size=VOCAB, hidden_size=48, intermediate_size=96)
        return train(student, teacher, batches, TrainConfig(**base, **extra), tmp_path / name).loss_curve

    small = run("small", logit_chunk=7)
    whole = run("whole", logit_chunk=10_000)  # one chunk: the whole micro-batch's logits at once
    ckpt = run("ckpt", logit_chunk=7, activation_checkpointing=True)
    assert len(small) == 3 and small[-1] < small[0]
    # The first step's loss is computed before any update; AdamW then amplifies rounding a little.
    for i, (a, b, c) in enumerate(zip(small, whole, ckpt, strict=True)):
        tol = 1e-6 if i == 0 else 1e-5
        assert abs(a - b) <= tol * abs(b) and abs(c - a) <= tol * abs(a)


def test_intermediate_loss_and_its_gradient_with_chunked_logits():
    """One kld+intermediate step by hand, whole logits against chunked: loss and every gradient."""
    student, teacher = pair()
    projection = HiddenProjection(48, 64)
    from ablate.distill.layer_map import Capture

    s_cap, t_cap = Capture.norms(student, [0, 3]), Capture.norms(teacher, [0, 3])

    def step(chunked_logits: bool):
        student.zero_grad()
        projection.zero_grad()
        if chunked_logits:
            with torch.no_grad():
                t_final = final_hidden(teacher, IDS)
            t_states = t_cap.take()
            with head_of(teacher) as t_head:
                logit = head_loss(
                    student, IDS, lambda h, head: chunked_kl_loss(h, head, t_final, t_head, 1.0, 11)
                )
        else:
            with torch.no_grad():
                t_logits = teacher(input_ids=IDS).logits
            t_states = t_cap.take()
            logit = kl_div_loss(student(input_ids=IDS).logits, t_logits)
        loss = combine_dynamic(logit, intermediate_loss(s_cap.take(), t_states, projection))
        loss.backward()
        return loss.detach(), {**grads(student), **{f"p.{k}": v for k, v in grads(projection).items()}}

    want, want_g = step(False)
    got, got_g = step(True)
    s_cap.remove()
    t_cap.remove()
    assert abs(float(got - want)) <= 1e-6 * abs(float(want)) and rel(got_g, want_g) <= 1e-6


@pytest.mark.parametrize("loss", ["kld", "ce"])
def test_activation_checkpointing_gives_the_same_losses_and_gradients(loss):
    student, teacher = pair()
    want, want_g = chunked(student, teacher, loss)
    checkpointed = copy.deepcopy(student)
    enable_checkpointing(checkpointed)
    checkpointed.train()
    assert is_checkpointing(checkpointed)
    calls = []
    checkpointed.model.layers[1].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    got, got_g = chunked(checkpointed, teacher, loss)
    assert len(calls) == 2  # the forward pass and its recomputation in backward
    assert abs(float(got - want)) <= 1e-6 * abs(float(want)) and rel(got_g, want_g) <= 1e-6


def test_evaluation_and_depth_importance_loss_equal_the_whole_logits_values():
    student, teacher = pair()
    batches = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(5))
    got = evaluate(student, batches, teacher=teacher, batch_size=2, logit_chunk=13)
    with torch.no_grad():
        s, t = student(input_ids=batches).logits, teacher(input_ids=batches).logits
    nll = F.cross_entropy(s[:, :-1].flatten(0, 1), batches[:, 1:].flatten(), reduction="sum").double()
    log_t, log_s = F.log_softmax(t, -1), F.log_softmax(s, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).double().mean()
    assert got["lm_loss"] == pytest.approx(float(nll) / (3 * 39), rel=1e-6)
    assert got["kl_to_teacher"] == pytest.approx(float(kl), rel=1e-5)
    assert got["top1_agreement"] == float((t.argmax(-1) == s.argmax(-1)).double().mean())
    with torch.no_grad():
        assert float(_lm_loss_sum(student, batches)) == pytest.approx(float(nll), rel=1e-6)


def test_auto_chunk_is_128_mib_of_logits_on_a_cpu_2_gib_on_a_gpu_and_bad_chunks_are_refused():
    assert chunk_positions("auto", 131_072) == 256 and chunk_positions("auto", 32_000) == 1048
    assert chunk_positions("auto", 131_072, "cuda") == 4096 and chunk_positions("auto", 32_000, "cuda") == 16777
    assert chunk_positions(None, 10**9) == 1 and chunk_positions(64, 131_072, "cuda") == 64
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="logit_chunk must be a positive"):
            chunk_positions(bad, 100)
        cfg = TrainConfig(logit_chunk=bad)
        with pytest.raises(TrainError, match="logit_chunk must be a positive"):
            cfg.validate()


@pytest.mark.parametrize("value", ["0", "-8", "big"])
def test_a_spec_with_a_chunk_that_is_not_positive_exits_2_naming_the_field(tmp_path, value):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\nteacher: {model: 'builtin:tiny-mistral'}\ntargets: {a: {hidden_size: 32}}\n"
        f"distill: {{tokens: 4096, logit_chunk: {value}}}\n"
    )
    result = CliRunner().invoke(main, ["validate", str(spec)])
    assert result.exit_code == 2 and "logit_chunk" in result.output


class _NoCheckpointing(MistralForCausalLM):
    supports_gradient_checkpointing = False


def test_checkpointing_a_model_class_that_cannot_is_a_clear_error(tmp_path):
    model = _NoCheckpointing(tiny_model().config)
    config = TrainConfig(loss="ce", tokens=4 * 16, global_batch=4, micro_batch=2, seq_len=16)
    config.activation_checkpointing = True
    with pytest.raises(TrainError, match="activation_checkpointing.*_NoCheckpointing.*cannot checkpoint"):
        train(model, None, text_batches(16, 4), config, tmp_path)
