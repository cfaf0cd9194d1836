"""The card's metadata is what the hub reads: model-index from lm-eval results and the held-out split,
the base model (a hub id, or the hub model a built-in is), the teacher's license, the hub datasets."""

from huggingface_hub import ModelCard

from ablate.build.card_meta import benchmark_table, front_matter, hub_datasets, teacher_license

RESULTS = {"pydoc_cloze": {"acc": 0.5, "acc_stderr": 0.05, "acc_norm": 0.625, "acc_norm_stderr": 0.04}}


def test_model_index_round_trips_through_huggingface_hub():
    card = ModelCard("---\n" + front_matter("exp-width", "builtin:smollm2-135m", RESULTS) + "\n---\n# x\n")
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert found == {("pydoc_cloze", "acc"): 0.5, ("pydoc_cloze", "acc_norm"): 0.625}
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub model the built-in is
    assert card.data.base_model_relation == "finetune"
    assert card.data.tags == ["ablate", "minitron", "pruning", "distillation"]


def test_hub_teacher_is_the_base_model_and_no_results_no_index():
    card = ModelCard("---\n" + front_matter("e", "HuggingFaceTB/SmolLM2-135M", None) + "\n---\n")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert card.data.eval_results is None


def test_table_has_a_row_per_model_and_a_column_per_task_metric():
    rows = benchmark_table([("teacher", RESULTS), ("this model", {"pydoc_cloze": {"acc": 0.25}})])
    assert rows[0] == "| model | pydoc_cloze acc | pydoc_cloze acc_norm |"
    assert rows[2] == "| teacher | 0.5000 ± 0.0500 | 0.6250 ± 0.0400 |"
    assert rows[3] == "| this model | 0.2500 | - |"


def test_random_builtin_has_no_base_and_held_out_results_join_the_index():
    meta = front_matter(
        "t",
        "builtin:tiny-mistral",
        None,
        heldout={"lm_loss": 2.5, "perplexity": 12.2},
        corpus="builtin:pydoc",
    )
    card = ModelCard("---\n" + meta + "\n---\n")
    assert card.data.base_model is None and card.data.license is None
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert found == {
        ("builtin:pydoc (held-out split)", "loss"): 2.5,
        ("builtin:pydoc (held-out split)", "perplexity"): 12.2,
    }


def test_license_from_the_builtin_or_the_teachers_own_card(tmp_path):
    assert teacher_license("builtin:smollm2-135m") == "apache-2.0"
    assert teacher_license("builtin:tiny-mistral") is None
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\n---\n# a teacher\n")
    assert teacher_license(str(tmp_path)) == "llama3.1"
    assert teacher_license("nobody/not-cached-here") is None  # no network: unknown, not an error
    card = ModelCard(
        "---\n" + front_matter("e", "builtin:smollm2-135m", None, license="apache-2.0") + "\n---\n"
    )
    assert card.data.license == "apache-2.0"


def test_hub_datasets_are_the_hf_sources():
    assert hub_datasets({"corpus": "builtin:pydoc"}) == []
    sources = [{"path": "hf:HuggingFaceFW/fineweb-edu:sample-10BT@train"}, {"path": "data/local.jsonl"}]
    assert hub_datasets({"corpus": None, "sources": sources}) == ["HuggingFaceFW/fineweb-edu"]


def test_a_ce_or_scratch_model_is_not_called_distilled():
    from ablate.build.export import _recipe_words

    assert "then knowledge distillation from the teacher" in _recipe_words("kld", "activation")
    for loss in ("ce", "scratch"):
        words = _recipe_words(loss, "activation")
        assert "baseline of the Minitron recipe" in words and "then knowledge distillation" not in words
