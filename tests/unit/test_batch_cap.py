"""A batch's byte budget (stream.group.cap_batch): shared among the partitions, a
prefix of each in order, never empty."""

from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition

from stream.group import cap_batch

P0, P1, P2 = (TopicPartition("t", p) for p in range(3))


def records(tp: TopicPartition, sizes: list[int]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"x" * size,
                       None, 1, size, [])
        for offset, size in enumerate(sizes, start=100)
    ]  # fmt: skip


def test_a_backlog_on_one_partition_does_not_fill_the_batch() -> None:
    fetched = {P0: records(P0, [10] * 50), P1: records(P1, [10] * 3)}
    kept, resume = cap_batch(fetched, 60)
    assert [len(kept[P0]), len(kept[P1])] == [3, 3]
    assert resume == {P0: 103}


def test_each_partition_keeps_a_prefix_in_order() -> None:
    fetched = {P0: records(P0, [10, 30, 10]), P1: records(P1, [10, 10, 10]),
               P2: records(P2, [40])}  # fmt: skip
    kept, resume = cap_batch(fetched, 60)
    assert {tp: [r.offset for r in rs] for tp, rs in kept.items()} == {
        P0: [100],
        P1: [100],
        P2: [100],
    }
    assert resume == {P0: 101, P1: 101}


def test_the_first_record_goes_whatever_its_size() -> None:
    fetched = {P0: records(P0, [500, 10]), P1: records(P1, [10])}
    kept, resume = cap_batch(fetched, 100)
    assert {tp: len(rs) for tp, rs in kept.items()} == {P0: 1}
    assert resume == {P0: 101, P1: 100}


def test_everything_fits() -> None:
    fetched = {P0: records(P0, [10, 10]), P1: records(P1, [10])}
    kept, resume = cap_batch(fetched, 1000)
    assert kept == {tp: list(rs) for tp, rs in fetched.items()}
    assert resume == {}
