from localdpo.trainer.distributed import DistInfo, epoch_order, epoch_permutation, rank_slice, stream_indices


def test_stream_concatenates_seeded_epochs():
    first, second = epoch_permutation(5, 7, 0).tolist(), epoch_permutation(5, 7, 1).tolist()
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4] and first != second
    assert stream_indices(5, 7, 0, 12) == first + second + epoch_permutation(5, 7, 2).tolist()[:2]
    assert stream_indices(5, 7, 3, 4) == first[3:] + second[:2]  # resume anywhere in the stream


def test_ranks_split_the_single_process_batch():
    """Two ranks of batch 2 see, together, exactly the batch of 4 a single process sees."""
    batch = stream_indices(9, 0, 8, 4)
    shares = [rank_slice(batch, DistInfo(rank, 2), 2) for rank in (0, 1)]
    assert shares[0] + shares[1] == batch
    assert rank_slice(batch, DistInfo(), 4) == batch


def test_with_rounds_each_epoch_gives_the_rounds_in_order():
    """Rounds of 2 and 3 examples: an epoch is round 1's two (indices 0, 1) shuffled, then round 2's three
    (2, 3, 4) shuffled, each by its own seeded permutation; the next epoch likewise."""
    rounds = [2, 3]
    epoch0 = epoch_permutation(2, 7, 0).tolist() + [2 + i for i in epoch_permutation(3, 7, 0).tolist()]
    epoch1 = epoch_permutation(2, 7, 1).tolist() + [2 + i for i in epoch_permutation(3, 7, 1).tolist()]
    assert epoch_order(5, 7, 0, rounds).tolist() == epoch0
    assert sorted(epoch0[:2]) == [0, 1] and sorted(epoch0[2:]) == [2, 3, 4]
    assert stream_indices(5, 7, 3, 4, rounds) == epoch0[3:] + epoch1[:2]
    assert epoch_order(5, 7, 0).tolist() == epoch_permutation(5, 7, 0).tolist()  # no rounds: as before
