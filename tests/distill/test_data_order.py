"""The data order: a seeded permutation per epoch, addressed by position (what exact resume relies on)."""

import torch

from ablate.distill.data_order import DataOrder


def test_data_order_is_seeded_and_covers_every_sequence_once_per_epoch():
    order = DataOrder(seed=7, n=10)
    first = order.indices(0, 25)  # two and a half epochs, crossing epoch boundaries mid-batch
    assert sorted(first[:10].tolist()) == list(range(10))
    assert sorted(first[10:20].tolist()) == list(range(10))
    assert not torch.equal(first[:10], first[10:20])  # a new permutation each epoch
    again = DataOrder(seed=7, n=10)
    assert torch.equal(
        torch.cat([again.indices(0, 12), again.indices(12, 13)]), first
    )  # position is all it needs
    assert not torch.equal(DataOrder(seed=8, n=10).indices(0, 10), first[:10])
