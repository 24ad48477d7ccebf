"""pymq.Batch: the messages of one read with no Python object per message
(Subscription.get_batch), and what an ack subscription's batch settles.

A batch is one read of the ring: every payload copied once, back to back, into
one bytes object, with its offsets, seqs and publish times in arrays beside
it (made by pymq._fast's Reader in the read itself). Its views are
memoryviews of those arrays: numpy.frombuffer(batch.data, dtype) reads fixed
size records in place. A batch owns its bytes: it stays valid for as long as
it is referenced, whatever the ring does afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class Batch:
    """Messages of one read. len(batch); batch.data: every payload back to
    back (a read-only memoryview); batch.offsets: len + 1 unsigned 64-bit
    integers (payload i is data[offsets[i]:offsets[i + 1]]); batch.seqs;
    batch.publish_times (epoch seconds, float64); batch.record_size: the
    common payload size, or None; batch[i] and iteration: memoryviews of the
    payloads; batch.payloads(): a list of bytes."""

    __slots__ = ("topic", "data", "offsets", "seqs", "publish_times", "record_size")

    def __init__(self, topic: str, data: bytes, offsets: bytes, seqs: bytes, times: bytes,
                 record_size: int | None):
        self.topic = topic
        self.data = memoryview(data)  # bytes: read-only
        self.offsets = memoryview(offsets).cast("Q")
        self.seqs = memoryview(seqs).cast("Q")
        self.publish_times = memoryview(times).cast("d")
        self.record_size = record_size

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> memoryview:
        n = len(self.seqs)
        if not -n <= i < n:
            raise IndexError(f"batch index {i} out of range (0..{n - 1})")
        i %= n
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[memoryview]:
        data, offs = self.data, self.offsets
        for i in range(len(self.seqs)):
            yield data[offs[i]:offs[i + 1]]

    def payloads(self) -> list[bytes]:
        """The payloads as bytes objects (one each: for convenience, not speed)."""
        data, offs = self.data, self.offsets
        return [data[offs[i]:offs[i + 1]].tobytes() for i in range(len(self.seqs))]

    def __repr__(self) -> str:
        return (f"<pymq.Batch of {len(self)} message(s) of {self.topic!r}, "
                f"{len(self.data):,} bytes>")


class AckBatch(Batch):
    """An ack subscription's batch: ack() or nack() all its messages (or those
    at some indices) in one native call; delivery_attempts (uint32 each).
    Acking a message twice, or after it was redelivered to another member
    who acked it, does nothing; a nack requeues only what is still in flight
    at the attempt this batch got."""

    __slots__ = ("delivery_attempts", "_reader", "_slots", "_seqs_raw", "_attempts_raw")

    def __init__(self, topic: str, data: bytes, offsets: bytes, seqs: bytes, times: bytes,
                 record_size: int | None, slots: bytes, attempts: bytes, reader: Any):
        super().__init__(topic, data, offsets, seqs, times, record_size)
        self.delivery_attempts = memoryview(attempts).cast("I")
        self._reader = reader
        self._slots, self._seqs_raw, self._attempts_raw = slots, seqs, attempts

    def _pick(self, indices: Sequence[int] | None) -> tuple[bytes, bytes, bytes]:
        if indices is None:
            return self._slots, self._seqs_raw, self._attempts_raw
        n = len(self.seqs)
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"batch indices out of range (0..{n - 1}, or -{n}..-1): {bad!r}")
        picked = sorted({i % n for i in indices})  # one message named twice is settled once
        slots = memoryview(self._slots).cast("I")
        return (b"".join(slots[i:i + 1].tobytes() for i in picked),
                b"".join(self.seqs[i:i + 1].tobytes() for i in picked),
                b"".join(self.delivery_attempts[i:i + 1].tobytes() for i in picked))

    def ack(self, indices: Sequence[int] | None = None) -> int:
        """Ack every message of the batch (or those at indices) in one native
        call; returns how many were still waiting for their ack. It never
        waits. Raises IndexError for an index out of range, SegmentMismatch
        for a corrupt segment."""
        slots, seqs, _ = self._pick(indices)
        n: int = self._reader.settle_batch(slots, seqs, None)
        return n

    def nack(self, indices: Sequence[int] | None = None) -> int:
        """Redeliver every message of the batch (or those at indices) now
        (dead-letter those out of retries); returns how many were requeued.
        Raises as ack()."""
        slots, seqs, attempts = self._pick(indices)
        n: int = self._reader.settle_batch(slots, seqs, attempts)
        return n


class HistoryBatch(AckBatch):
    """Messages replayed from disk (a group made with start= before what the
    ring holds) handed out by an ack subscription's get_batch: history, so
    ack() and nack() do nothing (as Message.ack() of such a message)."""

    __slots__ = ()

    def __init__(self, topic: str, data: bytes, offsets: bytes, seqs: bytes, times: bytes,
                 record_size: int | None):
        n = len(seqs) // 8
        super().__init__(topic, data, offsets, seqs, times, record_size, bytes(4 * n),
                         (1).to_bytes(4, "little") * n, None)  # first deliveries

    def ack(self, indices: Sequence[int] | None = None) -> int:
        """Nothing to ack: returns 0."""
        return 0

    def nack(self, indices: Sequence[int] | None = None) -> int:
        """Nothing to redeliver: returns 0."""
        return 0
