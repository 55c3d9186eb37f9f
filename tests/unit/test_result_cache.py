"""Result cache: exact lifetimes on a fake clock, LRU within a hard byte budget, keys."""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from decimal import Decimal

import pyarrow as pa
import pytest

from fabric.clock import FakeClock
from fabric.errors import InvalidArgument
from fabric.results.cache import (
    ENTRY_OVERHEAD,
    MESSAGE_OVERHEAD,
    CachedResult,
    ResultCache,
    ResultKey,
    cost_of,
)

SCHEMA = pa.schema([("a", pa.int64())])


def key(
    statement: str = "q",
    *,
    tenant: str = "t1",
    stage: str = "dev",
    connection: str = "c1",
    version: int = 1,
    **params: object,
) -> ResultKey:
    return ResultKey.build(tenant, stage, connection, version, statement, params)


def result(size: int, rows: int = 1) -> CachedResult:
    """A result costing exactly ``size`` bytes against the budget."""
    payload = size - ENTRY_OVERHEAD - MESSAGE_OVERHEAD
    assert payload >= 0
    return CachedResult.of([b"x" * payload], rows, SCHEMA)


def make(clock: FakeClock, max_bytes: int = 10_000, max_ttl: float = 3600.0) -> ResultCache:
    return ResultCache(max_bytes=max_bytes, max_ttl=max_ttl, clock=clock)


# -- lifetimes ----------------------------------------------------------------------------


def test_ttl_is_exact_at_the_boundary(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    r = result(1000)
    assert cache.put(key(), r, ttl=10)
    fake_clock.advance(9.999)
    assert cache.get(key()) is r
    fake_clock.advance(0.001)  # exactly put time + 10
    assert cache.get(key()) is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.expirations) == (1, 1, 1)
    assert (stats.entries, stats.bytes_held) == (0, 0)


def test_ttl_is_per_entry(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    cache.put(key("short"), result(1000), ttl=5)
    cache.put(key("long"), result(1000), ttl=50)
    fake_clock.advance(5)
    assert cache.get(key("short")) is None
    assert cache.get(key("long")) is not None


def test_ttl_is_capped_by_max_ttl(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_ttl=60)
    assert cache.put(key(), result(1000), ttl=3600)
    fake_clock.advance(59.999)
    assert cache.get(key()) is not None
    fake_clock.advance(0.001)
    assert cache.get(key()) is None


@pytest.mark.parametrize("ttl", [0, -1, float("nan")])
def test_ttl_zero_or_less_is_not_stored(fake_clock: FakeClock, ttl: float) -> None:
    cache = make(fake_clock)
    assert not cache.put(key(), result(1000), ttl=ttl)
    assert cache.get(key()) is None
    assert cache.stats.puts == 0
    assert cache.stats.entries == 0


def test_max_ttl_zero_disables_storing(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_ttl=0)
    assert not cache.put(key(), result(1000), ttl=10)


def test_purge_expired_and_put_drop_expired_entries(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    for i in range(5):
        cache.put(key(f"q{i}"), result(1000), ttl=10 + i)
    fake_clock.advance(12)
    assert cache.purge_expired() == 3  # ttl 10, 11, 12
    assert cache.stats.entries == 2
    fake_clock.advance(10)
    cache.put(key("new"), result(1000), ttl=10)  # a put drops the expired ones too
    stats = cache.stats
    assert (stats.entries, stats.expirations, stats.bytes_held) == (1, 5, 1000)


def test_replacing_an_entry_resets_its_lifetime_and_bytes(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    cache.put(key(), result(3000), ttl=10)
    fake_clock.advance(8)
    r2 = result(2000)
    cache.put(key(), r2, ttl=10)
    fake_clock.advance(8)
    assert cache.get(key()) is r2
    assert cache.stats.bytes_held == 2000
    assert cache.purge_expired() == 0  # the replaced entry's stale expiry is ignored


# -- LRU and budget -----------------------------------------------------------------------


def test_lru_eviction_order_and_get_refreshes(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_bytes=3000)
    for name in "abc":
        assert cache.put(key(name), result(1000), ttl=60)
    assert cache.get(key("a")) is not None  # a is now the most recent; b the least
    cache.put(key("d"), result(1000), ttl=60)
    assert cache.get(key("b")) is None
    assert all(cache.get(key(n)) is not None for n in "acd")
    cache.put(key("e"), result(2000), ttl=60)  # needs two: a and c (d was read last)
    assert cache.get(key("a")) is None
    assert cache.get(key("c")) is None
    assert cache.get(key("d")) is not None
    assert cache.stats.evictions == 3
    assert cache.stats.bytes_held == 3000


def test_too_large_result_is_rejected_without_evicting(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_bytes=5000)
    cache.put(key("keep"), result(4000), ttl=60)
    assert not cache.put(key("big"), result(5001), ttl=60)
    assert cache.get(key("keep")) is not None
    stats = cache.stats
    assert (stats.rejected_too_large, stats.evictions, stats.entries) == (1, 0, 1)
    assert cache.put(key("exact"), result(5000), ttl=60)  # exactly the budget fits
    assert cache.stats.bytes_held == 5000


def _check_invariant(cache: ResultCache) -> None:
    stats = cache.stats
    assert 0 <= stats.bytes_held <= cache.max_bytes
    # The accounting matches what is actually held.
    assert stats.bytes_held == sum(e.result.nbytes for e in cache._entries.values())
    assert stats.entries == len(cache._entries)


def test_bytes_never_exceed_budget_under_random_operations(fake_clock: FakeClock) -> None:
    rng = random.Random(20240601)
    budget = 50_000
    cache = make(fake_clock, max_bytes=budget, max_ttl=100)
    model: dict[ResultKey, int] = {}
    for _ in range(5000):
        op = rng.random()
        k = key(
            f"q{rng.randrange(60)}",
            tenant=rng.choice(["t1", "t2"]),
            connection=rng.choice(["c1", "c2", "c3"]),
        )
        if op < 0.45:
            size = rng.randrange(ENTRY_OVERHEAD + MESSAGE_OVERHEAD, 12_000)
            if rng.random() < 0.02:
                size = budget + rng.randrange(1, 1000)
            stored = cache.put(k, result(size), ttl=rng.uniform(-5, 150))
            if stored:
                model[k] = size
        elif op < 0.85:
            got = cache.get(k)
            if got is not None:
                assert got.nbytes == model[k]
        elif op < 0.9:
            cache.purge_connection(k.tenant, k.connection)
        elif op < 0.95:
            cache.purge_expired()
        elif op < 0.951:
            cache.clear()
        else:
            fake_clock.advance(rng.uniform(0, 20))
        _check_invariant(cache)
    stats = cache.stats
    assert stats.evictions > 0 and stats.expirations > 0 and stats.rejected_too_large > 0


def test_bytes_held_tracks_entries(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    cache.put(key("a"), result(1000), ttl=60)
    cache.put(key("b"), result(2500), ttl=60)
    assert cache.stats.bytes_held == 3500
    assert cache.clear() == 2
    assert cache.stats.bytes_held == 0
    assert len(cache) == 0


def test_cost_counts_messages_and_overheads() -> None:
    r = CachedResult.of([b"abc", b"defgh"], 3, SCHEMA)
    assert r.nbytes == ENTRY_OVERHEAD + 8 + 2 * MESSAGE_OVERHEAD == cost_of(r.messages)
    assert "abc" not in repr(r)


# -- keys ---------------------------------------------------------------------------------


def test_tenants_and_stages_never_share_an_entry(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    cache.put(key(tenant="t1", stage="dev"), result(1000), ttl=60)
    assert cache.get(key(tenant="t2", stage="dev")) is None
    assert cache.get(key(tenant="t1", stage="prod")) is None
    assert cache.get(key(tenant="t1", stage="dev", connection="c2")) is None
    assert cache.get(key(tenant="t1", stage="dev")) is not None


def test_catalog_version_change_misses(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    cache.put(key(version=1), result(1000), ttl=60)
    assert cache.get(key(version=2)) is None
    assert cache.get(key(version=1)) is not None


def test_params_are_type_tagged(fake_clock: FakeClock) -> None:
    values: list[object] = [
        1,
        1.0,
        True,
        "1",
        b"1",
        Decimal("1"),
        Decimal("1.0"),
        [1],
        (1,),
        ["1"],
        None,
        "None",
        0,
        False,
        0.0,
        -0.0,
        "",
    ]
    keys = {key(p=v) for v in values}
    assert len(keys) == len(values)
    cache = make(fake_clock)
    cache.put(key(p=1), result(1000), ttl=60)
    for v in values[1:]:
        assert cache.get(key(p=v)) is None
    assert cache.get(key(p=1)) is not None


def test_params_are_canonical_regardless_of_order() -> None:
    assert key(a=1, b="x") == key(b="x", a=1)
    assert key(a=1, b="x") != key(a="x", b=1)
    assert key(a=1) != key(b=1)
    assert hash(key(a=1, b="x")) == hash(key(b="x", a=1))


def test_supported_param_types_build_stable_keys() -> None:
    params = {
        "d": dt.date(2024, 1, 1),
        "ts": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
        "t": dt.time(12, 30),
        "td": dt.timedelta(days=1),
        "u": uuid.UUID(int=7),
        "n": None,
        "l": [1, "a", None],
    }
    k1 = ResultKey.build("t", "s", "c", 1, "q", params)
    k2 = ResultKey.build("t", "s", "c", 1, "q", dict(params))
    assert k1 == k2
    assert ResultKey.build(
        "t", "s", "c", 1, "q", {"ts": dt.datetime(2024, 1, 1, 12)}
    ) != ResultKey.build("t", "s", "c", 1, "q", {"ts": params["ts"]})


def test_unknown_param_types_are_refused_without_echoing_values() -> None:
    class Secret:
        def __repr__(self) -> str:
            return "hunter2"

    with pytest.raises(InvalidArgument) as info:
        key(p=Secret())
    assert "hunter2" not in str(info.value)
    assert "'p'" in str(info.value)
    with pytest.raises(InvalidArgument):
        key(p={"a": 1})
    with pytest.raises(InvalidArgument):
        key(p=[Secret()])


def test_key_repr_hides_param_values() -> None:
    text = repr(key(password="hunter2", n=42))
    assert "hunter2" not in text and "42" not in text
    assert "password" in text


# -- purges -------------------------------------------------------------------------------


def test_purge_connection_counts(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_bytes=100_000)
    for i in range(3):
        cache.put(key(f"q{i}", connection="c1"), result(1000), ttl=60)
        cache.put(key(f"q{i}", connection="c1", stage="prod", version=9), result(1000), ttl=60)
        cache.put(key(f"q{i}", connection="c2"), result(1000), ttl=60)
        cache.put(key(f"q{i}", connection="c1", tenant="t2"), result(1000), ttl=60)
    assert cache.purge_connection("t1", "c1") == 6
    assert cache.purge_connection("t1", "c1") == 0
    stats = cache.stats
    assert (stats.purges, stats.entries, stats.bytes_held) == (6, 6, 6000)
    assert cache.get(key("q0", connection="c2")) is not None
    assert cache.get(key("q0", connection="c1", tenant="t2")) is not None
    assert cache.get(key("q0", connection="c1")) is None


def test_result_computed_across_a_purge_is_not_stored(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    epoch = cache.epoch()
    cache.purge_connection("t1", "c1")  # connection changed while the query ran
    assert not cache.put(key(connection="c1"), result(1000), ttl=60, epoch=epoch)
    assert cache.put(key(connection="c2"), result(1000), ttl=60, epoch=epoch)
    assert cache.put(key(connection="c1"), result(1000), ttl=60, epoch=cache.epoch())
    epoch = cache.epoch()
    cache.clear()
    assert not cache.put(key(connection="c2"), result(1000), ttl=60, epoch=epoch)
    assert cache.stats.rejected_stale == 2


# -- builder ------------------------------------------------------------------------------


def test_builder_collects_within_budget(fake_clock: FakeClock) -> None:
    cache = make(fake_clock)
    builder = cache.builder()
    for m in (b"schema", b"batch1", b"eos"):
        assert builder.add(m)
    built = builder.finish(rows=5, schema=SCHEMA)
    assert built is not None
    assert built.messages == (b"schema", b"batch1", b"eos")
    assert built.nbytes == cost_of(built.messages)
    assert built.rows == 5
    assert builder.finish(rows=5, schema=SCHEMA) is None  # once only
    assert not builder.add(b"more")


def test_builder_drops_everything_once_over_budget(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_bytes=100_000)
    builder = cache.builder(max_bytes=ENTRY_OVERHEAD + 2 * (MESSAGE_OVERHEAD + 100))
    assert builder.add(b"a" * 100)
    assert builder.add(b"b" * 100)
    assert not builder.add(b"c")
    assert not builder.active
    assert builder.nbytes == 0
    assert builder._messages == []  # nothing held while the rest streams through
    assert not builder.add(b"d")
    assert builder.finish(rows=3, schema=SCHEMA) is None


def test_builder_cap_never_exceeds_cache_budget(fake_clock: FakeClock) -> None:
    cache = make(fake_clock, max_bytes=1000)
    builder = cache.builder(max_bytes=10**9)
    assert not builder.add(b"x" * 1000)


def test_builder_abandon(fake_clock: FakeClock) -> None:
    builder = make(fake_clock).builder()
    builder.add(b"x")
    builder.abandon()
    assert builder._messages == []
    assert builder.finish(rows=1, schema=SCHEMA) is None


# -- threads ------------------------------------------------------------------------------


def test_thread_safety_smoke(fake_clock: FakeClock) -> None:
    budget = 40_000
    cache = make(fake_clock, max_bytes=budget, max_ttl=100)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(2000):
                k = key(f"q{rng.randrange(40)}")
                if rng.random() < 0.5:
                    cache.put(k, result(rng.randrange(600, 5000)), ttl=rng.uniform(1, 100))
                else:
                    got = cache.get(k)
                    assert got is None or got.rows == 1
                if rng.random() < 0.01:
                    cache.purge_connection("t1", "c1")
                if rng.random() < 0.01:
                    fake_clock.advance(1)
                assert cache.stats.bytes_held <= budget
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats
    assert stats.bytes_held <= budget
    held = sum(r.nbytes for r in (cache.get(key(f"q{i}")) for i in range(40)) if r is not None)
    assert held <= stats.bytes_held
