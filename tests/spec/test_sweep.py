"""Trial keys are a hash of what the trial computes, not of how the spec was written."""

from ablate.spec.validate import load_spec

from .conftest import BASE

REORDERED = """\
sweep:
  grid:
    distill.loss: [kld, ce]
    target: [width, depth]
distill:
  micro_batch: 4
  global_batch: 8
  tokens: 2000
  loss: kld
targets:
  depth: {num_hidden_layers: 2}
  width: {intermediate_size: 96, hidden_size: 48}
data: {eval_tokens: 2000, seq_len: 64}
teacher:
  model: builtin:tiny-mistral
name: t
"""


def keys(loaded):
    return {tuple(sorted(t.overrides.items())): t.key for t in loaded.trials}


def test_keys_independent_of_order_and_number_spelling(write):
    a = load_spec(write(BASE, "a.yaml"))
    b = load_spec(write(REORDERED, "b.yaml"))
    assert keys(a) == keys(b)
    assert len(set(keys(a).values())) == 4


def test_keys_change_with_what_is_computed(write):
    a = keys(load_spec(write(BASE, "a.yaml")))
    b = keys(load_spec(write(BASE.replace("tokens: 2k", "tokens: 4k"), "b.yaml")))
    assert not set(a.values()) & set(b.values())


def test_keys_ignore_target_names_and_bookkeeping(write):
    a = load_spec(write(BASE, "a.yaml"))
    renamed = (
        BASE.replace("width", "wide").replace("name: t", "name: other") + "resources: {max_concurrent: 1}\n"
    )
    b = load_spec(write(renamed, "b.yaml"))
    assert sorted(t.key for t in a.trials) == sorted(t.key for t in b.trials)


def test_seeds_multiply_trials(write):
    loaded = load_spec(write(BASE + "  seeds: [0, 1, 2]\n"))
    assert len(loaded.trials) == 12
    assert len({t.key for t in loaded.trials}) == 12


def test_swept_values_are_normalised(write):
    loaded = load_spec(write(BASE.replace("distill.loss: [kld, ce]", "distill.tokens: [2k, '4000']")))
    assert sorted({t.overrides["distill.tokens"] for t in loaded.trials}) == [2000, 4000]
    assert sorted({t.spec.distill.tokens for t in loaded.trials}) == [2000, 4000]


def test_no_target_axis_sweeps_every_target(write):
    loaded = load_spec(write(BASE.replace("    target: [width, depth]\n", "")))
    assert sorted(t.target for t in loaded.trials) == ["depth", "depth", "width", "width"]


def test_list_of_grids_pools_trials_and_fills_every_axis(write):
    text = BASE.replace(
        "  grid:\n    target: [width, depth]\n    distill.loss: [kld, ce]\n",
        "  grid:\n    - {target: [width, depth], distill.loss: [kld, ce]}\n"
        "    - {target: [width], importance.width.batch_agg: [l2, mean]}\n",
    )
    loaded = load_spec(write(text))
    # 4 from the main grid; (width, l2) of the side grid is the main grid's (width, kld): pooled once
    assert len(loaded.trials) == 5
    for trial in loaded.trials:
        assert set(trial.overrides) == {"target", "distill.loss", "importance.width.batch_agg", "seed"}
    side = [t for t in loaded.trials if t.overrides["importance.width.batch_agg"] == "mean"]
    assert len(side) == 1 and side[0].overrides["distill.loss"] == "kld"


def test_problems_in_the_second_grid_name_its_index(problems):
    found = problems(
        BASE.replace(
            "  grid:\n    target: [width, depth]\n    distill.loss: [kld, ce]\n",
            "  grid:\n    - {distill.loss: [kld]}\n    - {distill.loss: [mse]}\n",
        )
    )
    assert len(found) == 1 and "sweep.grid[1].distill.loss[0]" in found[0]


def test_seed_axis_in_a_grid_overrides_sweep_seeds(write):
    text = BASE.replace(
        "  grid:\n    target: [width, depth]\n    distill.loss: [kld, ce]\n",
        "  grid:\n    - {target: [width, depth], distill.loss: [kld, ce]}\n    - {target: [width], seed: [1, 2]}\n",
    )
    loaded = load_spec(write(text))
    assert sorted(t.seed for t in loaded.trials) == [0, 0, 0, 0, 1, 2]
    assert all(t.overrides["distill.loss"] == "kld" for t in loaded.trials if t.seed)
