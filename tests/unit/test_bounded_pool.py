"""BoundedPool against an in-memory connection double: lending, giving back, discarding,
the bound, waiting and timing out, idle expiry and checks (on a fake clock), close."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from connectors.pool import BoundedPool, PoolTimeout
from fabric.errors import SourceUnavailable


class FakeConnection:
    """What the pool holds: a connection that knows whether it was closed."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.healthy = True


class FakeServer:
    """Opens FakeConnections and counts what happens to them."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.refuse = False

    def connect(self) -> FakeConnection:
        if self.refuse:
            raise ConnectionRefusedError("the server is down")
        conn = FakeConnection(len(self.opened))
        self.opened.append(conn)
        return conn

    @staticmethod
    def close(conn: FakeConnection) -> None:
        conn.closed = True

    @staticmethod
    def check(conn: FakeConnection) -> bool:
        return conn.healthy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    server: FakeServer, clock: FakeClock | None = None, **options: Any
) -> BoundedPool[FakeConnection]:
    return BoundedPool[FakeConnection](
        server.connect,
        server.close,
        check=server.check,
        clock=clock or FakeClock(),
        **options,
    )


def test_a_released_connection_is_lent_again_newest_first() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=3)
    first, second = pool.acquire(), pool.acquire()
    assert (pool.size, pool.idle) == (2, 0)
    pool.release(first, reuse=True)
    pool.release(second, reuse=True)
    assert (pool.size, pool.idle) == (2, 2)
    assert pool.acquire() is second  # newest first: the others can age out
    assert len(server.opened) == 2


def test_a_discarded_connection_is_closed_and_frees_its_slot() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=1)
    conn = pool.acquire()
    pool.release(conn, reuse=False)
    assert conn.closed
    assert (pool.size, pool.idle) == (0, 0)
    replacement = pool.acquire()
    assert replacement is not conn and not replacement.closed


def test_the_bound_holds_and_a_full_pool_times_out() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=2, timeout=0)
    held = [pool.acquire(), pool.acquire()]
    with pytest.raises(PoolTimeout, match="raise pool_max"):
        pool.acquire()
    assert pool.size == 2 and len(server.opened) == 2
    pool.release(held[0], reuse=True)
    assert pool.acquire() is held[0]


def test_a_waiting_acquire_gets_the_connection_given_back() -> None:
    server = FakeServer()
    pool = BoundedPool[FakeConnection](server.connect, server.close, max_size=1, timeout=30)
    conn = pool.acquire()
    got: list[FakeConnection] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    pool.release(conn, reuse=True)
    waiter.join(timeout=10)
    assert got == [conn]
    assert len(server.opened) == 1


def test_a_failed_connect_frees_its_slot_and_propagates() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=1, timeout=0)
    server.refuse = True
    with pytest.raises(ConnectionRefusedError):
        pool.acquire()
    assert pool.size == 0
    server.refuse = False
    assert pool.acquire().number == 0


def test_idle_connections_beyond_min_size_expire() -> None:
    server = FakeServer()
    clock = FakeClock()
    pool = make_pool(server, clock, min_size=1, max_size=3, max_idle=60)
    conns = [pool.acquire() for _ in range(3)]
    for conn in conns:
        pool.release(conn, reuse=True)
        clock.now += 1
    clock.now += 60  # the two oldest are idle for more than 60 s, the newest is not
    assert pool.acquire() is conns[2]
    assert conns[0].closed and conns[1].closed
    assert pool.size == 1


def test_min_size_connections_are_kept_however_long_they_idle() -> None:
    server = FakeServer()
    clock = FakeClock()
    pool = make_pool(server, clock, min_size=1, max_size=2, max_idle=60)
    conn = pool.acquire()
    pool.release(conn, reuse=True)
    clock.now += 3600
    assert pool.acquire() is conn and not conn.closed


def test_a_connection_idle_past_check_after_is_checked_and_replaced_when_broken() -> None:
    server = FakeServer()
    clock = FakeClock()
    pool = make_pool(server, clock, max_size=1, check_after=30)
    conn = pool.acquire()
    pool.release(conn, reuse=True)
    conn.healthy = False
    clock.now += 10
    assert pool.acquire() is conn  # not idle long enough to be checked
    pool.release(conn, reuse=True)
    clock.now += 31
    replacement = pool.acquire()
    assert replacement is not conn and conn.closed
    assert pool.size == 1


def test_close_closes_idle_connections_and_lent_ones_when_given_back() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=2)
    idle, lent = pool.acquire(), pool.acquire()
    pool.release(idle, reuse=True)
    pool.close()
    assert idle.closed and not lent.closed
    pool.release(lent, reuse=True)
    assert lent.closed
    assert pool.size == 0
    with pytest.raises(SourceUnavailable, match="closed"):
        pool.acquire()


def test_close_wakes_a_waiting_acquire() -> None:
    server = FakeServer()
    pool = BoundedPool[FakeConnection](server.connect, server.close, max_size=1, timeout=30)
    pool.acquire()
    errors: list[BaseException] = []

    def wait_for_one() -> None:
        try:
            pool.acquire()
        except SourceUnavailable as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    pool.close()
    waiter.join(timeout=10)
    assert len(errors) == 1 and not isinstance(errors[0], PoolTimeout)


@pytest.mark.parametrize(("min_size", "max_size"), [(-1, 2), (3, 2), (0, 0)])
def test_impossible_sizes_are_refused(min_size: int, max_size: int) -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="pool sizes"):
        BoundedPool[FakeConnection](
            server.connect, server.close, min_size=min_size, max_size=max_size
        )


def test_an_idle_connection_its_server_dropped_is_never_lent_however_recently_used() -> None:
    server = FakeServer()
    dropped: set[int] = set()
    pool = BoundedPool[FakeConnection](
        server.connect,
        server.close,
        check=server.check,
        alive=lambda conn: conn.number not in dropped,
        clock=FakeClock(),
        max_size=2,
    )
    first, second = pool.acquire(), pool.acquire()
    pool.release(first, reuse=True)
    pool.release(second, reuse=True)
    dropped.update({first.number, second.number})  # a server restart: both gone
    fresh = pool.acquire()  # at once, not only after check_after
    assert fresh not in (first, second) and first.closed and second.closed
    assert pool.size == 1


def test_figures_count_lent_idle_and_waiting_connections() -> None:
    server = FakeServer()
    pool = make_pool(server, max_size=1, timeout=30)
    assert pool.figures() == (0, 0, 0)
    lent = pool.acquire()
    assert pool.figures() == (1, 0, 0)
    got: list[FakeConnection] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
    waiter.start()
    deadline = threading.Event()
    for _ in range(1000):  # until the second caller waits (bounded: ~10 s)
        if pool.figures()[2] == 1 or deadline.wait(0.01):
            break
    assert pool.figures() == (1, 0, 1)
    pool.release(lent, reuse=True)
    waiter.join(timeout=10)
    assert got == [lent] and pool.figures() == (1, 0, 0)
    pool.release(got[0], reuse=True)
    assert pool.figures() == (0, 1, 0)
