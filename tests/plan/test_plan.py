"""Plans of the published recipes match the papers' parameter counts, with no weights and no network."""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablate.cli import main
from ablate.plan.graph import build_graph
from ablate.spec.validate import load_spec

SPECS = Path(__file__).parents[2] / "specs"


def plan_json(name: str) -> dict:
    result = CliRunner().invoke(main, ["plan", str(SPECS / name), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_mistral_nemo_minitron_8b(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    plan = plan_json("mistral-nemo-minitron-8b.yaml")
    assert time.perf_counter() - started < 20
    assert abs(plan["teacher"]["params"] / 1e9 - 12.25) < 0.01
    [student] = plan["targets"]
    assert abs(student["params"] / 1e9 - 8.41) < 0.01
    assert student["shape"] == {
        "num_hidden_layers": 40,
        "hidden_size": 4096,
        "intermediate_size": 11520,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
    }
    [trial] = plan["trials"]
    assert trial["tokens"] == 380 * 10**9
    # 6 N_student D + 2 N_teacher D, by hand
    expected = 6 * student["params"] * 380e9 + 2 * plan["teacher"]["params"] * 380e9
    assert abs(trial["flops"] - expected) / expected < 1e-12
    assert abs(trial["gpu_hours"] - expected / (0.4 * 989e12) / 3600) < 1e-6
    assert plan["teacher"]["correction_tokens"] == 127 * 10**9


def test_llama_31_minitron_4b_width_and_depth():
    plan = plan_json("llama-3.1-minitron-4b.yaml")
    assert abs(plan["teacher"]["params"] / 1e9 - 8.03) < 0.01
    params = {t["name"]: t["params"] / 1e9 for t in plan["targets"]}
    assert set(params) == {"width", "depth"}
    assert all(abs(p - 4.5) < 0.05 for p in params.values()), params


def test_quickstart_shares_stages_and_hits_90m():
    plan = plan_json("quickstart.yaml")
    assert plan["stages"]["run"] == {
        "tokenize": 1,  # one source, shared by every trial
        "teacher": 1,
        "importance": 1,
        "prune": 2,
        "distill": 4,
        "eval": 7,  # four trials', two pruned students' and the teacher's (the reference evals)
        "benchmark": 5,
    }
    assert plan["stages"]["naive"]["teacher"] == 4
    assert all(85e6 < t["params"] < 95e6 for t in plan["targets"])
    assert abs(plan["teacher"]["params"] - 134_515_008) == 0


PINNED = {  # trial keys and stage hashes as they were before the reference evals were added
    "tiny": "b071b8cd8096143d",
    "quickstart": "89a6bbf1daae6a76",
    "smollm2-minitron": "0d251dce6ab4401f",
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_reference_evals_are_new_stages_and_move_no_existing_hash(name):
    """pruned-eval and teacher-eval are stages of their own: every trial key and every hash the shipped
    specs had before them is unchanged (so finished experiments keep their artifacts), and theirs are new."""
    from ablate.plan.stages import PRUNED_EVAL, TEACHER_EVAL, trial_stages
    from ablate.spec.sweep import stable_hash

    loaded = load_spec(SPECS / f"{name}.yaml")
    per_trial = {t.key: trial_stages(t, str(SPECS)) for t in loaded.trials}
    kinds = ("teacher", "importance", "prune", "distill", "eval")
    old = {key: {k: stages[k].hash for k in kinds} for key, stages in per_trial.items()}
    assert stable_hash(old, 16) == PINNED[name]
    if name == "tiny":
        assert old["196127d3db11"]["distill"] == "distill-b141c00ca896ca18"
        assert old["196127d3db11"]["eval"] == "eval-a27d35f4d9bc5b21"
    every = {
        s.hash
        for stages in per_trial.values()
        for k, s in stages.items()
        if k not in (PRUNED_EVAL, TEACHER_EVAL)
    }
    for stages in per_trial.values():
        pruned, teacher = stages[PRUNED_EVAL], stages[TEACHER_EVAL]
        assert pruned.hash not in every and teacher.hash not in every
        assert pruned.parents == (stages["prune"].hash, stages["teacher"].hash)
        assert teacher.parents == (stages["teacher"].hash,)
        assert pruned.config == {**stages["eval"].config, "model": "pruned"}
    graph = build_graph(loaded.trials, str(SPECS))
    prunes = {s["prune"].hash for s in per_trial.values()}
    teachers = {s["teacher"].hash for s in per_trial.values()}
    assert len({s[PRUNED_EVAL].hash for s in per_trial.values()}) == len(prunes)  # one per pruned model
    assert len({s[TEACHER_EVAL].hash for s in per_trial.values()}) == len(teachers)
    assert graph.counts()["eval"] == len(per_trial) + len(prunes) + len(teachers)


def test_mfu_flag_scales_gpu_hours():
    a = plan_json("mistral-nemo-minitron-8b.yaml")
    result = CliRunner().invoke(
        main, ["plan", str(SPECS / "mistral-nemo-minitron-8b.yaml"), "--json", "--mfu", "0.2"]
    )
    b = json.loads(result.stdout)
    assert abs(b["total_gpu_hours"] / a["total_gpu_hours"] - 2.0) < 1e-9


def test_graph_shares_teacher_and_importance_across_targets():
    loaded = load_spec(SPECS / "tiny.yaml")
    graph = build_graph(loaded.trials)
    per_trial = graph.trial_stages
    teachers = {stages["teacher"] for stages in per_trial.values()}
    prunes = {stages["prune"] for stages in per_trial.values()}
    assert len(teachers) == 1 and len(prunes) == 2
    for stage in graph.stages.values():
        assert all(parent in graph.stages for parent in stage.parents)


def test_8b_trial_needs_sharding_with_the_arithmetic():
    result = CliRunner().invoke(
        main, ["plan", str(SPECS / "mistral-nemo-minitron-8b.yaml"), "--gpu", "h100-80gb", "--json"]
    )
    plan = json.loads(result.stdout)
    memory = plan["trials"][0]["memory"]
    assert not memory["fits"]
    # by hand: 16 B x 8.414B student states + 2 B x 12.25B teacher, all on one device
    assert memory["student_state_bytes"] == 16 * 8_414_105_600
    assert memory["teacher_bytes"] == 2 * 12_247_782_400
    # one process: fp32 master weights under bf16 autocast keep 100 B per token, hidden unit and layer;
    # FSDP's bf16 layers keep 55 (fitted to peak memory measured on an H200 by bench/distill_fsdp.py)
    assert memory["activation_bytes"] == 100 * 8192 * 4096 * 40
    usable = 0.9 * 81559 * 2**20
    # One 8192-token micro-batch of FSDP activations (68.75 GiB) and the logits leave no room on an H100...
    fsdp_activations = 55 * 8192 * 4096 * 40
    assert usable - fsdp_activations - memory["logits_bytes"] - memory["fsdp_gathered_bytes"] < 0
    assert memory["min_gpus_fsdp"] is None
    # ... with checkpointing each layer keeps its bf16 input, plus one layer recomputed (230 B)
    room = (
        usable
        - (2 * 8192 * 4096 * 40 + 230 * 8192 * 4096)
        - memory["logits_bytes"]
        - memory["fsdp_gathered_bytes"]
    )
    expected = -(-(memory["student_state_bytes"] + memory["teacher_bytes"]) // room)
    assert memory["min_gpus_fsdp_checkpointed"] == expected == 4
    assert set(memory["arithmetic"]) >= {"student_state", "teacher", "activations", "logits", "total"}
    assert any("set distill.activation_checkpointing: true and shard it: strategy fsdp with at least 4 GPUs" in w
               for w in plan["warnings"])  # fmt: skip
    h200 = json.loads(
        CliRunner()
        .invoke(main, ["plan", str(SPECS / "mistral-nemo-minitron-8b.yaml"), "--gpu", "h200-141gb", "--json"])
        .stdout
    )
    on_h200 = h200["trials"][0]["memory"]
    assert (on_h200["min_gpus_fsdp"], on_h200["min_gpus_fsdp_checkpointed"]) == (4, 2)


def test_fsdp_workers_shard_states_in_the_estimate(tmp_path):
    text = (SPECS / "mistral-nemo-minitron-8b.yaml").read_text()
    text = text.replace("trial: {cpu: 64, gpu: 8}", "trial: {cpu: 256, gpu: 32, workers: 32, strategy: fsdp}")
    text = text.replace(
        "micro_batch: 1", "micro_batch: 1\n  global_batch: 768\n  activation_checkpointing: true"
    )
    text = text.replace(
        "  global_batch: 768\n  micro_batch: 1\n  global_batch: 768", "  global_batch: 768\n  micro_batch: 1"
    )
    assert "activation_checkpointing: true" in text
    spec = tmp_path / "sharded.yaml"
    spec.write_text(
        text.replace("configs/mistral-nemo-12b.json", str(SPECS / "configs/mistral-nemo-12b.json"))
    )
    plan = json.loads(CliRunner().invoke(main, ["plan", str(spec), "--json"]).stdout)
    memory = plan["trials"][0]["memory"]
    assert memory["workers"] == 32 and memory["strategy"] == "fsdp"
    assert memory["student_state_bytes"] == 16 * 8_414_105_600 / 32
    assert memory["fits"] and not plan["warnings"]


def _nemo_plan(tmp_path, extra_distill: str = "", resources: str | None = None) -> dict:
    text = (SPECS / "mistral-nemo-minitron-8b.yaml").read_text()
    text = text.replace("configs/mistral-nemo-12b.json", str(SPECS / "configs/mistral-nemo-12b.json"))
    text = text.replace("  checkpoint_every: 500\n", f"  checkpoint_every: 500\n{extra_distill}")
    if resources:
        text = text.replace("trial: {cpu: 64, gpu: 8}", resources)
    spec = tmp_path / "nemo.yaml"
    spec.write_text(text)
    result = CliRunner().invoke(main, ["plan", str(spec), "--gpu", "h100-80gb", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_memory_terms_add_up_and_follow_logit_chunk_and_checkpointing(tmp_path):
    memory = _nemo_plan(tmp_path)["trials"][0]["memory"]
    terms = {t["term"]: t for t in memory["terms"]}
    assert set(terms) == {"student_state", "teacher", "activations", "logits", "fsdp_gathered"}
    assert sum(t["bytes"] for t in terms.values()) == pytest.approx(memory["total_bytes"])
    assert terms["student_state"]["sharded"] and not terms["logits"]["sharded"]
    # logit_chunk auto on a GPU: 2 GiB of fp32 logits, 4096 positions at a vocabulary of 131,072; 20 B per
    # entry of both models' chunks, plus the student head's fp32 gradient and its scaled copy (2 x 4 B x
    # 4096 hidden x 131,072).
    assert memory["logit_chunk"] == 4096
    assert memory["logits_bytes"] == 20 * 4096 * 131072 + 8 * 131072 * 4096
    small = _nemo_plan(tmp_path, "  logit_chunk: 64\n")["trials"][0]["memory"]
    assert small["logits_bytes"] == 20 * 64 * 131072 + 8 * 131072 * 4096

    ckpt = _nemo_plan(tmp_path, "  activation_checkpointing: true\n")
    m = ckpt["trials"][0]["memory"]
    assert m["activation_checkpointing"] and m["activation_bytes"] == m["activation_bytes_checkpointed"]
    assert m["activation_bytes"] == 4 * 8192 * 4096 * 40 + 418 * 8192 * 4096  # autocast: fp32 inputs kept
    # without checkpointing no number of H100s holds FSDP's activations of one 8192-token micro-batch
    assert memory["min_gpus_fsdp"] is None and m["min_gpus_fsdp"] == m["min_gpus_fsdp_checkpointed"] == 4
    assert "activation_checkpointing" not in ckpt["warnings"][0]
    # A CPU-sized chunk (256 positions) would save one: the advice says so, and the count is right.
    assert m["small_chunk"] == {"logit_chunk": 256, "min_gpus_fsdp": 3, "min_gpus_fsdp_checkpointed": 3}
    assert "distill.logit_chunk: 256 needs 3" in ckpt["warnings"][0]
    small_ckpt = _nemo_plan(tmp_path, "  activation_checkpointing: true\n  logit_chunk: 256\n")
    assert small_ckpt["trials"][0]["memory"]["min_gpus_fsdp"] == 3
    assert small_ckpt["trials"][0]["memory"]["small_chunk"] is None
    # The fewest GPUs it names fit: the same trial on that many FSDP workers has no warning.
    n = m["min_gpus_fsdp"]
    sharded = _nemo_plan(
        tmp_path,
        "  activation_checkpointing: true\n",
        f"trial: {{cpu: 64, gpu: {n}, workers: {n}, strategy: fsdp}}",
    )
    assert sharded["trials"][0]["memory"]["fits"] and not sharded["warnings"]


def test_whole_logits_are_what_chunking_saves():
    from ablate.plan.memory import estimate_memory

    shape = dict(
        student_params=8_414_105_600, teacher_params=12_247_782_400, layers=40, hidden=4096, vocab=131072,
        seq_len=8192, micro_batch=1, needs_teacher=True, workers=1, strategy="single", teacher_hidden=5120,
    )  # fmt: skip
    whole = estimate_memory(**shape, logit_chunk=None)
    chunked = estimate_memory(**shape)
    assert whole.logits_bytes == 24 * 8192 * 131072  # 14 B (student) + 10 B (teacher) per logit
    # Even with checkpointing, whole logits (24 GiB) cost GPUs that the chunks do not.
    assert whole.min_gpus_fsdp_checkpointed > chunked.min_gpus_fsdp_checkpointed
    assert "distill.logit_chunk (auto) makes the logits" in whole.advice
    assert "distill.logit_chunk (auto)" not in chunked.advice


def test_memory_settings_leave_trial_keys_and_stage_hashes_alone_at_their_defaults(tmp_path):
    from ablate.plan.stages import trial_stages

    def stages(extra_distill: str = "", extra_correction: str = ""):
        text = (SPECS / "mistral-nemo-minitron-8b.yaml").read_text()
        text = text.replace("configs/mistral-nemo-12b.json", str(SPECS / "configs/mistral-nemo-12b.json"))
        text = text.replace("  checkpoint_every: 500\n", f"  checkpoint_every: 500\n{extra_distill}")
        text = text.replace("    warmup_steps: 120\n", f"    warmup_steps: 120\n{extra_correction}")
        spec = tmp_path / "s.yaml"
        spec.write_text(text)
        (trial,) = load_spec(spec).trials
        return trial.key, {k: s.hash for k, s in trial_stages(trial).items()}

    key, hashes = stages()
    assert (
        key == "71a7c42969fa"
    )  # pinned: the shipped spec's key (data.sources), as before these settings existed
    assert stages("  logit_chunk: auto\n  activation_checkpointing: false\n  compile: false\n") == (
        key,
        hashes,
    )
    assert stages("", "    activation_checkpointing: false\n    logit_chunk: auto\n    compile: false\n") == (
        key,
        hashes,
    )
    assert stages("  compile: true\n")[0] != key  # like the others: in the key once it is not the default
    on_key, on_hashes = stages("  activation_checkpointing: true\n")
    assert on_key != key and on_hashes["teacher"] != hashes["teacher"]  # the correction follows distill
    assert on_hashes["importance"] != hashes["importance"]  # it depends on the (corrected) teacher
    _, corrected = stages("", "    activation_checkpointing: true\n")
    assert corrected["teacher"] == on_hashes["teacher"] and corrected["distill"] != on_hashes["distill"]


def test_compiled_layers_have_their_own_activation_terms():
    """distill.compile: 40 B per token, hidden unit and layer for FSDP's bf16 layers (55 eager), 5 B per
    kept layer input when checkpointed (2 eager), as fitted to the H200 runs in ablate/plan/memory.py."""
    from ablate.plan.memory import GIB, estimate_memory

    shape = dict(
        student_params=981_517_824, teacher_params=1_510_017_024, layers=16, hidden=1536, vocab=131072,
        seq_len=8192, micro_batch=4, needs_teacher=True, workers=1, strategy="fsdp", teacher_hidden=2048,
        gpu="h200-141gb", logit_chunk=256,
    )  # fmt: skip
    tokens_hidden = 8192 * 4 * 1536
    eager, compiled = estimate_memory(**shape), estimate_memory(**shape, compile=True)
    assert eager.activation_bytes == 55 * tokens_hidden * 16
    assert compiled.activation_bytes == 40 * tokens_hidden * 16 and compiled.compile
    assert compiled.activation_bytes_checkpointed == 5 * tokens_hidden * 16 + 230 * tokens_hidden
    assert "compiled" in compiled.arithmetic["activations"]
    # Only the activations move; the measured peaks it was fitted to are within 2%.
    assert eager.total_bytes - compiled.total_bytes == pytest.approx(15 * tokens_hidden * 16)
    assert compiled.total_bytes / GIB == pytest.approx(50.9, rel=0.02)
    ckpt = estimate_memory(**shape, compile=True, activation_checkpointing=True)
    assert ckpt.total_bytes / GIB == pytest.approx(36.3, rel=0.02)
    assert estimate_memory(**{**shape, "logit_chunk": 4096}, compile=True).total_bytes / GIB == pytest.approx(
        61.7, rel=0.02
    )


def test_the_plan_counts_compiled_layers_from_the_spec(tmp_path):
    eager = _nemo_plan(tmp_path)["trials"][0]["memory"]
    compiled = _nemo_plan(tmp_path, "  compile: true\n")["trials"][0]["memory"]
    assert compiled["compile"] and not eager["compile"]
    # the nemo trial runs one process under autocast: 73 B compiled against 100 eager
    assert compiled["activation_bytes"] == 73 * 8192 * 4096 * 40
    assert eager["activation_bytes"] == 100 * 8192 * 4096 * 40
