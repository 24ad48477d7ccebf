"""asyncio: aget, aget_many, aiter, apublish and apublish_many, in real
processes. One waiter thread per loop (per 127 topics awaited), not one per
subscription; a cancelled or timed-out aget takes nothing; a broker closing
ends the wait with BrokerClosed; apublish awaits room without blocking the
loop."""

import asyncio
import subprocess
import sys

import pytest

import pymq
import workers
from pymq import aio
from helpers import join_all

KiB = 1024


def test_messages_from_another_process_arrive_in_order_plain_and_ack(make_broker, name, ctx):
    broker = make_broker()
    plain = broker.subscribe("t")
    acks = broker.subscribe_with_ack("t", group="g")
    p = ctx.Process(target=workers.publisher, args=(name, "t", 1, 2000, 100, 16))

    async def main():
        got_plain, got_ack = [], []

        async def read_plain():
            while len(got_plain) < 2000:
                got_plain.extend(await plain.aget_many(100, timeout=30))

        async def read_ack():
            async for m in acks.aiter():
                got_ack.append(m.payload)
                m.ack()
                if len(got_ack) == 2000:
                    break
        p.start()
        await asyncio.gather(read_plain(), read_ack())
        return got_plain, got_ack
    got_plain, got_ack = asyncio.run(main())
    join_all([p])
    assert [workers.parse_payload(x) for x in got_plain] == [(1, i) for i in range(2000)]
    assert got_ack == got_plain
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["pending"]) == (2000, 0)


def test_a_thousand_subscriptions_in_one_loop_and_one_thread_per_127_topics(name, ctx):
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=4 * KiB,
                                           max_message_bytes=1 * KiB))
    try:
        topics = [f"t{i}" for i in range(130)]
        subs = [(t, broker.subscribe(t)) for t in topics for _ in range(8)]  # 1,040
        assert len(subs) == 1040

        async def main():
            tasks = [asyncio.ensure_future(s.aget(timeout=60)) for _, s in subs]
            waiter = aio.waiter()
            while sum(len(t.words) for t in waiter.sleepers.values()) < 130:
                await asyncio.sleep(0.01)  # every one of them is awaiting now
            threads = len(waiter.sleepers)
            p = ctx.Process(target=workers.publish_each, args=(name, topics))
            p.start()
            got = await asyncio.gather(*tasks)
            await asyncio.get_running_loop().run_in_executor(None, join_all, [p])
            return threads, got
        threads, got = asyncio.run(main())
        assert threads == 2  # 130 words: 127 for the first thread, 3 for the second
        assert got == [t.encode() for t, _ in subs]
    finally:
        broker.close()


def test_a_cancelled_or_timed_out_aget_takes_nothing(make_broker):
    broker = make_broker(ack_timeout=3600)
    acks = broker.subscribe_with_ack("t", group="g")
    other = broker.subscribe_with_ack("t", group="g")

    async def main():
        task = asyncio.ensure_future(acks.aget())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(pymq.Timeout, match="topic 't': nothing arrived within 0.05 s"):
            await acks.aget(timeout=0.05)
        for i in range(200):  # timeouts racing arrivals: each message once, to someone
            broker.publish("t", b"%d" % i)
            try:
                m = await asyncio.wait_for(acks.aget(), 0.0001)
                m.ack()
            except (asyncio.TimeoutError, TimeoutError):
                pass
    asyncio.run(main())
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    rest = []
    while g["acked"] + len(rest) < 200:
        batch = other.get_many(200, timeout=1)
        other.ack_many(batch)
        rest += batch
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["pending"], g["redelivered"]) == (200, 0, 0)


def test_broker_closed_while_awaiting(name, ctx):
    ready, stop = ctx.Event(), ctx.Event()
    owner = ctx.Process(target=workers.broker_until_sigterm, args=(name, ready))
    owner.start()
    assert ready.wait(30)
    client = pymq.connect(name)
    sub = client.subscribe("t")

    async def main():
        task = asyncio.ensure_future(sub.aget())
        await asyncio.sleep(0.05)
        owner.terminate()  # the owner closes the broker on SIGTERM
        with pytest.raises(pymq.BrokerClosed):
            await task
    try:
        asyncio.run(main())
    finally:
        client.close()
        owner.join(30)


def test_apublish_awaits_room_without_blocking_the_loop(make_broker, name, ctx):
    broker = make_broker(ring_bytes=4 * KiB, max_message_bytes=512, publish_timeout=0.05)
    broker.subscribe("t", group="slow")  # holds every message until it reads
    payload = b"x" * 200
    n = 0
    with pytest.raises(pymq.Full):
        while True:
            broker.publish("t", payload)
            n += 1

    async def main():
        with pytest.raises(pymq.Full, match=r"within 0.1 s"):
            await broker.apublish("t", payload, timeout=0.1)
        ticks = 0
        publishing = asyncio.ensure_future(broker.apublish_many("t", [payload] * 3, timeout=60))

        async def tick():
            nonlocal ticks
            while not publishing.done():
                ticks += 1
                await asyncio.sleep(0.001)
        ticker = asyncio.ensure_future(tick())
        while ticks < 20:  # the loop runs while apublish waits
            await asyncio.sleep(0.001)
        drain = ctx.Process(target=workers.drain_group, args=(name, "t", "slow", n + 3))
        drain.start()
        seq = await publishing
        await ticker
        await asyncio.get_running_loop().run_in_executor(None, join_all, [drain])
        return seq
    assert asyncio.run(main()) == n + 3


def test_import_pymq_leaves_asyncio_to_those_who_await(name):
    """asyncio is about a quarter of `import pymq`: a process that never
    awaits (a supervisor, a command line, most publishers) does not import it;
    the first coroutine call does."""
    code = """if True:
        import sys, pymq
        assert 'asyncio' not in sys.modules and 'pymq.aio' not in sys.modules
        b = pymq.Broker(pymq.BrokerConfig(name=sys.argv[1]))
        import asyncio
        assert asyncio.run(b.apublish('t', b'x')) == 1  # room: no wait, no pymq.aio
        s = b.subscribe('t')
        try:
            asyncio.run(s.aget(timeout=0.01))
            sys.exit('aget returned')
        except pymq.Timeout:
            assert 'pymq.aio' in sys.modules
        b.close()
    """
    r = subprocess.run([sys.executable, "-c", code, name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
