"""The card's metadata is what the hub reads: model-index from lm-eval results, base model for hub ids."""

from huggingface_hub import ModelCard

from ablate.build.card_meta import benchmark_table, front_matter

RESULTS = {"pydoc_cloze": {"acc": 0.5, "acc_stderr": 0.05, "acc_norm": 0.625, "acc_norm_stderr": 0.04}}


def test_model_index_round_trips_through_huggingface_hub():
    card = ModelCard("---\n" + front_matter("exp-width", "builtin:smollm2-135m", RESULTS) + "\n---\n# x\n")
    found = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert found == {("pydoc_cloze", "acc"): 0.5, ("pydoc_cloze", "acc_norm"): 0.625}
    assert card.data.base_model is None  # a built-in is not a hub model
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
