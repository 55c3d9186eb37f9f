"""TPC-H data: generated locally with `tpchgen-cli`, loaded with COPY into a dedicated
PostgreSQL database (one schema per scale factor, so quick and full runs do not reload
each other), with primary keys, foreign keys (and indexes on them), VACUUM ANALYZE.

A marker row in `fabric_bench_meta.loaded` records scale, generator version and layout;
a schema whose marker matches is reused as is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.common import Pg

LAYOUT = 1
"""Bump when the DDL below changes, so existing schemas are reloaded."""
META_SCHEMA = "fabric_bench_meta"

TABLES: dict[str, str] = {
    "region": """r_regionkey integer not null, r_name char(25) not null,
                 r_comment varchar(152)""",
    "nation": """n_nationkey integer not null, n_name char(25) not null,
                 n_regionkey integer not null, n_comment varchar(152)""",
    "part": """p_partkey integer not null, p_name varchar(55) not null,
               p_mfgr char(25) not null, p_brand char(10) not null,
               p_type varchar(25) not null, p_size integer not null,
               p_container char(10) not null, p_retailprice numeric(15,2) not null,
               p_comment varchar(23) not null""",
    "supplier": """s_suppkey integer not null, s_name char(25) not null,
                   s_address varchar(40) not null, s_nationkey integer not null,
                   s_phone char(15) not null, s_acctbal numeric(15,2) not null,
                   s_comment varchar(101) not null""",
    "partsupp": """ps_partkey integer not null, ps_suppkey integer not null,
                   ps_availqty integer not null, ps_supplycost numeric(15,2) not null,
                   ps_comment varchar(199) not null""",
    "customer": """c_custkey integer not null, c_name varchar(25) not null,
                   c_address varchar(40) not null, c_nationkey integer not null,
                   c_phone char(15) not null, c_acctbal numeric(15,2) not null,
                   c_mktsegment char(10) not null, c_comment varchar(117) not null""",
    "orders": """o_orderkey integer not null, o_custkey integer not null,
                 o_orderstatus char(1) not null, o_totalprice numeric(15,2) not null,
                 o_orderdate date not null, o_orderpriority char(15) not null,
                 o_clerk char(15) not null, o_shippriority integer not null,
                 o_comment varchar(79) not null""",
    "lineitem": """l_orderkey integer not null, l_partkey integer not null,
                   l_suppkey integer not null, l_linenumber integer not null,
                   l_quantity numeric(15,2) not null, l_extendedprice numeric(15,2) not null,
                   l_discount numeric(15,2) not null, l_tax numeric(15,2) not null,
                   l_returnflag char(1) not null, l_linestatus char(1) not null,
                   l_shipdate date not null, l_commitdate date not null,
                   l_receiptdate date not null, l_shipinstruct char(25) not null,
                   l_shipmode char(10) not null, l_comment varchar(44) not null""",
}

PRIMARY_KEYS = {
    "region": "r_regionkey",
    "nation": "n_nationkey",
    "part": "p_partkey",
    "supplier": "s_suppkey",
    "partsupp": "ps_partkey, ps_suppkey",
    "customer": "c_custkey",
    "orders": "o_orderkey",
    "lineitem": "l_orderkey, l_linenumber",
}

# (table, columns, referenced table, referenced columns); each also gets an index.
FOREIGN_KEYS = [
    ("nation", "n_regionkey", "region", "r_regionkey"),
    ("supplier", "s_nationkey", "nation", "n_nationkey"),
    ("customer", "c_nationkey", "nation", "n_nationkey"),
    ("partsupp", "ps_partkey", "part", "p_partkey"),
    ("partsupp", "ps_suppkey", "supplier", "s_suppkey"),
    ("orders", "o_custkey", "customer", "c_custkey"),
    ("lineitem", "l_orderkey", "orders", "o_orderkey"),
    ("lineitem", "l_partkey, l_suppkey", "partsupp", "ps_partkey, ps_suppkey"),
]
# FK columns already leading a primary key need no extra index.
_INDEXED_BY_PK = {("partsupp", "ps_partkey"), ("lineitem", "l_orderkey")}


def schema_for(scale: float) -> str:
    text = f"{Decimal(str(scale)).normalize():f}".replace(".", "_")
    return f"tpch_sf{text}"


def generator() -> str:
    exe = Path(sys.executable).parent / "tpchgen-cli"
    found = str(exe) if exe.exists() else shutil.which("tpchgen-cli")
    if not found:
        raise RuntimeError("tpchgen-cli is not installed: pip install -e '.[bench]'")
    return found


def generator_version() -> str:
    out = subprocess.run(
        [generator(), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    return out or "tpchgen-cli (unknown version)"


@dataclass(frozen=True)
class Dataset:
    pg: Pg
    scale: float
    schema: str
    generator: str
    rows: dict[str, int]
    reused: bool
    load_seconds: float


def _ensure_database(pg: Pg) -> None:
    try:
        psycopg.connect(pg.conninfo(connect_timeout=5)).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    with psycopg.connect(
        pg.conninfo(database="postgres", connect_timeout=5), autocommit=True
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg.database)))
    print(f"created database {pg.database}", flush=True)


def _marker(conn: psycopg.Connection, schema: str) -> dict[str, object] | None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)))
    conn.execute(
        sql.SQL("""CREATE TABLE IF NOT EXISTS {}.loaded (
        schema_name text PRIMARY KEY, scale numeric NOT NULL, generator text NOT NULL,
        layout integer NOT NULL, rows jsonb NOT NULL, seconds double precision,
        loaded_at timestamptz NOT NULL DEFAULT now())""").format(sql.Identifier(META_SCHEMA))
    )
    row = conn.execute(
        sql.SQL(
            "SELECT scale, generator, layout, rows, seconds FROM {}.loaded WHERE schema_name = %s"
        ).format(sql.Identifier(META_SCHEMA)),
        (schema,),
    ).fetchone()
    if row is None:
        return None
    return {
        "scale": row[0],
        "generator": row[1],
        "layout": row[2],
        "rows": row[3],
        "seconds": row[4],
    }


def prepare(pg: Pg, scale: float, *, force: bool = False) -> Dataset:
    """The TPC-H schema at `scale`, loading it unless an identical load is there."""
    _ensure_database(pg)
    schema = schema_for(scale)
    version = generator_version()
    with psycopg.connect(pg.conninfo(connect_timeout=5), autocommit=True) as conn:
        marker = _marker(conn, schema)
        if (
            not force
            and marker is not None
            and Decimal(str(marker["scale"])) == Decimal(str(scale))
            and marker["generator"] == version
            and marker["layout"] == LAYOUT
        ):
            rows = dict(marker["rows"])  # type: ignore[call-overload]
            print(
                f"TPC-H SF{scale} already loaded in {pg.database}.{schema} "
                f"({rows.get('lineitem', 0):,} lineitem rows); reusing it",
                flush=True,
            )
            return Dataset(pg, scale, schema, version, rows, True, float(marker["seconds"] or 0))  # type: ignore[arg-type]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fabric-bench-tpch-") as tmp:
        print(f"generating TPC-H SF{scale} with {version} ...", flush=True)
        generate(scale, Path(tmp))
        generated = time.perf_counter()
        print(
            f"  generated in {generated - started:.1f} s; loading {pg.database}.{schema}",
            flush=True,
        )
        rows = load(pg, schema, Path(tmp))
    seconds = time.perf_counter() - started
    with psycopg.connect(pg.conninfo(connect_timeout=5), autocommit=True) as conn:
        conn.execute(
            sql.SQL("""INSERT INTO {}.loaded (schema_name, scale, generator, layout,
                rows, seconds) VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (schema_name) DO UPDATE SET scale = EXCLUDED.scale,
                generator = EXCLUDED.generator, layout = EXCLUDED.layout,
                rows = EXCLUDED.rows, seconds = EXCLUDED.seconds, loaded_at = now()""").format(
                sql.Identifier(META_SCHEMA)
            ),
            (schema, Decimal(str(scale)), version, LAYOUT, json.dumps(rows), seconds),
        )
    print(f"  loaded in {seconds:.1f} s ({rows['lineitem']:,} lineitem rows)", flush=True)
    return Dataset(pg, scale, schema, version, rows, False, seconds)


def generate(scale: float, directory: Path) -> None:
    """The eight tables at `scale` as `directory/<table>.csv` (with a header line)."""
    subprocess.run(
        [generator(), "csv", "-s", str(scale), "-o", str(directory), "--no-progress", "-q"],
        check=True,
        timeout=3600,
    )


def load(pg: Pg, schema: str, directory: Path) -> dict[str, int]:
    """(Re)create `schema` with the tables from `directory`, keys, indexes, statistics."""
    ident = sql.Identifier(schema)
    rows: dict[str, int] = {}
    # One transaction: tables created here take COPY ... FREEZE (no hint-bit rewrite on
    # first read, so the first benchmark read is not penalised).
    with psycopg.connect(pg.conninfo(connect_timeout=5)) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        for table, columns in TABLES.items():
            conn.execute(
                sql.SQL("CREATE TABLE {}.{} (" + columns + ")").format(ident, sql.Identifier(table))
            )
        for table in TABLES:
            t0 = time.perf_counter()
            copy_sql = sql.SQL(
                "COPY {}.{} FROM STDIN (FORMAT csv, HEADER true, FREEZE true)"
            ).format(ident, sql.Identifier(table))
            with conn.cursor() as cur:
                with cur.copy(copy_sql) as copy, open(directory / f"{table}.csv", "rb") as f:
                    while block := f.read(1 << 20):
                        copy.write(block)
                rows[table] = cur.rowcount
            print(
                f"    {table}: {rows[table]:,} rows in {time.perf_counter() - t0:.1f} s", flush=True
            )
        conn.commit()
    t0 = time.perf_counter()
    with psycopg.connect(pg.conninfo(connect_timeout=5), autocommit=True) as conn:
        for table, key in PRIMARY_KEYS.items():
            conn.execute(
                sql.SQL("ALTER TABLE {}.{} ADD PRIMARY KEY (" + key + ")").format(
                    ident, sql.Identifier(table)
                )
            )
        for table, cols, ref, ref_cols in FOREIGN_KEYS:
            conn.execute(
                sql.SQL(
                    "ALTER TABLE {}.{} ADD FOREIGN KEY (" + cols + ") "
                    "REFERENCES {}.{} (" + ref_cols + ")"
                ).format(ident, sql.Identifier(table), ident, sql.Identifier(ref))
            )
            if (table, cols) not in _INDEXED_BY_PK:
                conn.execute(
                    sql.SQL("CREATE INDEX ON {}.{} (" + cols + ")").format(
                        ident, sql.Identifier(table)
                    )
                )
        for table in TABLES:
            conn.execute(sql.SQL("VACUUM ANALYZE {}.{}").format(ident, sql.Identifier(table)))
    print(f"    keys, indexes, VACUUM ANALYZE in {time.perf_counter() - t0:.1f} s", flush=True)
    return rows


# -- the 22 queries ------------------------------------------------------------------------


@dataclass(frozen=True)
class TpchQuery:
    number: int
    sql: str
    total_order: bool
    """Whether ORDER BY fixes the order of every output row (compare in order); otherwise
    results are compared as multisets."""


def queries(scale: float) -> list[TpchQuery]:
    """The 22 TPC-H queries in Fabric SQL (PostgreSQL-flavoured, entity names = table
    names), with the specification's validation parameters. Q15's view is a CTE."""
    fraction = Decimal("0.0001") / Decimal(str(scale))
    texts: dict[int, tuple[str, bool]] = {
        1: (
            """
select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty,
       sum(l_extendedprice) as sum_base_price,
       sum(l_extendedprice * (1 - l_discount)) as sum_disc_price,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) as sum_charge,
       avg(l_quantity) as avg_qty, avg(l_extendedprice) as avg_price,
       avg(l_discount) as avg_disc, count(*) as count_order
from lineitem
where l_shipdate <= date '1998-12-01' - interval '90' day
group by l_returnflag, l_linestatus
order by l_returnflag, l_linestatus""",
            True,
        ),
        2: (
            """
select s_acctbal, s_name, n_name, p_partkey, p_mfgr, s_address, s_phone, s_comment
from part, supplier, partsupp, nation, region
where p_partkey = ps_partkey and s_suppkey = ps_suppkey and p_size = 15
  and p_type like '%BRASS' and s_nationkey = n_nationkey and n_regionkey = r_regionkey
  and r_name = 'EUROPE'
  and ps_supplycost = (
      select min(ps_supplycost) from partsupp, supplier, nation, region
      where p_partkey = ps_partkey and s_suppkey = ps_suppkey
        and s_nationkey = n_nationkey and n_regionkey = r_regionkey and r_name = 'EUROPE')
order by s_acctbal desc, n_name, s_name, p_partkey
limit 100""",
            True,
        ),
        3: (
            """
select l_orderkey, sum(l_extendedprice * (1 - l_discount)) as revenue, o_orderdate,
       o_shippriority
from customer, orders, lineitem
where c_mktsegment = 'BUILDING' and c_custkey = o_custkey and l_orderkey = o_orderkey
  and o_orderdate < date '1995-03-15' and l_shipdate > date '1995-03-15'
group by l_orderkey, o_orderdate, o_shippriority
order by revenue desc, o_orderdate
limit 10""",
            False,
        ),
        4: (
            """
select o_orderpriority, count(*) as order_count
from orders
where o_orderdate >= date '1993-07-01'
  and o_orderdate < date '1993-07-01' + interval '3' month
  and exists (select * from lineitem
              where l_orderkey = o_orderkey and l_commitdate < l_receiptdate)
group by o_orderpriority
order by o_orderpriority""",
            True,
        ),
        5: (
            """
select n_name, sum(l_extendedprice * (1 - l_discount)) as revenue
from customer, orders, lineitem, supplier, nation, region
where c_custkey = o_custkey and l_orderkey = o_orderkey and l_suppkey = s_suppkey
  and c_nationkey = s_nationkey and s_nationkey = n_nationkey
  and n_regionkey = r_regionkey and r_name = 'ASIA'
  and o_orderdate >= date '1994-01-01'
  and o_orderdate < date '1994-01-01' + interval '1' year
group by n_name
order by revenue desc""",
            False,
        ),
        6: (
            """
select sum(l_extendedprice * l_discount) as revenue
from lineitem
where l_shipdate >= date '1994-01-01'
  and l_shipdate < date '1994-01-01' + interval '1' year
  and l_discount between 0.06 - 0.01 and 0.06 + 0.01
  and l_quantity < 24""",
            True,
        ),
        7: (
            """
select supp_nation, cust_nation, l_year, sum(volume) as revenue
from (
  select n1.n_name as supp_nation, n2.n_name as cust_nation,
         extract(year from l_shipdate) as l_year,
         l_extendedprice * (1 - l_discount) as volume
  from supplier, lineitem, orders, customer, nation n1, nation n2
  where s_suppkey = l_suppkey and o_orderkey = l_orderkey and c_custkey = o_custkey
    and s_nationkey = n1.n_nationkey and c_nationkey = n2.n_nationkey
    and ((n1.n_name = 'FRANCE' and n2.n_name = 'GERMANY')
      or (n1.n_name = 'GERMANY' and n2.n_name = 'FRANCE'))
    and l_shipdate between date '1995-01-01' and date '1996-12-31'
) as shipping
group by supp_nation, cust_nation, l_year
order by supp_nation, cust_nation, l_year""",
            True,
        ),
        8: (
            """
select o_year,
       sum(case when nation = 'BRAZIL' then volume else 0 end) / sum(volume) as mkt_share
from (
  select extract(year from o_orderdate) as o_year,
         l_extendedprice * (1 - l_discount) as volume, n2.n_name as nation
  from part, supplier, lineitem, orders, customer, nation n1, nation n2, region
  where p_partkey = l_partkey and s_suppkey = l_suppkey and l_orderkey = o_orderkey
    and o_custkey = c_custkey and c_nationkey = n1.n_nationkey
    and n1.n_regionkey = r_regionkey and r_name = 'AMERICA'
    and s_nationkey = n2.n_nationkey
    and o_orderdate between date '1995-01-01' and date '1996-12-31'
    and p_type = 'ECONOMY ANODIZED STEEL'
) as all_nations
group by o_year
order by o_year""",
            True,
        ),
        9: (
            """
select nation, o_year, sum(amount) as sum_profit
from (
  select n_name as nation, extract(year from o_orderdate) as o_year,
         l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity as amount
  from part, supplier, lineitem, partsupp, orders, nation
  where s_suppkey = l_suppkey and ps_suppkey = l_suppkey and ps_partkey = l_partkey
    and p_partkey = l_partkey and o_orderkey = l_orderkey and s_nationkey = n_nationkey
    and p_name like '%green%'
) as profit
group by nation, o_year
order by nation, o_year desc""",
            True,
        ),
        10: (
            """
select c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) as revenue, c_acctbal,
       n_name, c_address, c_phone, c_comment
from customer, orders, lineitem, nation
where c_custkey = o_custkey and l_orderkey = o_orderkey
  and o_orderdate >= date '1993-10-01'
  and o_orderdate < date '1993-10-01' + interval '3' month
  and l_returnflag = 'R' and c_nationkey = n_nationkey
group by c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
order by revenue desc
limit 20""",
            False,
        ),
        11: (
            f"""
select ps_partkey, sum(ps_supplycost * ps_availqty) as value
from partsupp, supplier, nation
where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY'
group by ps_partkey
having sum(ps_supplycost * ps_availqty) > (
    select sum(ps_supplycost * ps_availqty) * {fraction}
    from partsupp, supplier, nation
    where ps_suppkey = s_suppkey and s_nationkey = n_nationkey and n_name = 'GERMANY')
order by value desc""",
            False,
        ),
        12: (
            """
select l_shipmode,
       sum(case when o_orderpriority = '1-URGENT' or o_orderpriority = '2-HIGH'
                then 1 else 0 end) as high_line_count,
       sum(case when o_orderpriority <> '1-URGENT' and o_orderpriority <> '2-HIGH'
                then 1 else 0 end) as low_line_count
from orders, lineitem
where o_orderkey = l_orderkey and l_shipmode in ('MAIL', 'SHIP')
  and l_commitdate < l_receiptdate and l_shipdate < l_commitdate
  and l_receiptdate >= date '1994-01-01'
  and l_receiptdate < date '1994-01-01' + interval '1' year
group by l_shipmode
order by l_shipmode""",
            True,
        ),
        13: (
            """
select c_count, count(*) as custdist
from (
  select c_custkey, count(o_orderkey) as c_count
  from customer left outer join orders
    on c_custkey = o_custkey and o_comment not like '%special%requests%'
  group by c_custkey
) as c_orders
group by c_count
order by custdist desc, c_count desc""",
            True,
        ),
        14: (
            """
select 100.00 * sum(case when p_type like 'PROMO%' then l_extendedprice * (1 - l_discount)
                         else 0 end) / sum(l_extendedprice * (1 - l_discount))
       as promo_revenue
from lineitem, part
where l_partkey = p_partkey and l_shipdate >= date '1995-09-01'
  and l_shipdate < date '1995-09-01' + interval '1' month""",
            True,
        ),
        15: (
            """
with revenue0 as (
  select l_suppkey as supplier_no, sum(l_extendedprice * (1 - l_discount)) as total_revenue
  from lineitem
  where l_shipdate >= date '1996-01-01'
    and l_shipdate < date '1996-01-01' + interval '3' month
  group by l_suppkey
)
select s_suppkey, s_name, s_address, s_phone, total_revenue
from supplier, revenue0
where s_suppkey = supplier_no
  and total_revenue = (select max(total_revenue) from revenue0)
order by s_suppkey""",
            True,
        ),
        16: (
            """
select p_brand, p_type, p_size, count(distinct ps_suppkey) as supplier_cnt
from partsupp, part
where p_partkey = ps_partkey and p_brand <> 'Brand#45'
  and p_type not like 'MEDIUM POLISHED%' and p_size in (49, 14, 23, 45, 19, 3, 36, 9)
  and ps_suppkey not in (select s_suppkey from supplier
                         where s_comment like '%Customer%Complaints%')
group by p_brand, p_type, p_size
order by supplier_cnt desc, p_brand, p_type, p_size""",
            True,
        ),
        17: (
            """
select sum(l_extendedprice) / 7.0 as avg_yearly
from lineitem, part
where p_partkey = l_partkey and p_brand = 'Brand#23' and p_container = 'MED BOX'
  and l_quantity < (select 0.2 * avg(l_quantity) from lineitem
                    where l_partkey = p_partkey)""",
            True,
        ),
        18: (
            """
select c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity)
from customer, orders, lineitem
where o_orderkey in (select l_orderkey from lineitem
                     group by l_orderkey having sum(l_quantity) > 300)
  and c_custkey = o_custkey and o_orderkey = l_orderkey
group by c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice
order by o_totalprice desc, o_orderdate
limit 100""",
            False,
        ),
        19: (
            """
select sum(l_extendedprice * (1 - l_discount)) as revenue
from lineitem, part
where (p_partkey = l_partkey and p_brand = 'Brand#12'
       and p_container in ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG')
       and l_quantity >= 1 and l_quantity <= 1 + 10 and p_size between 1 and 5
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')
   or (p_partkey = l_partkey and p_brand = 'Brand#23'
       and p_container in ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK')
       and l_quantity >= 10 and l_quantity <= 10 + 10 and p_size between 1 and 10
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')
   or (p_partkey = l_partkey and p_brand = 'Brand#34'
       and p_container in ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG')
       and l_quantity >= 20 and l_quantity <= 20 + 10 and p_size between 1 and 15
       and l_shipmode in ('AIR', 'AIR REG') and l_shipinstruct = 'DELIVER IN PERSON')""",
            True,
        ),
        20: (
            """
select s_name, s_address
from supplier, nation
where s_suppkey in (
    select ps_suppkey from partsupp
    where ps_partkey in (select p_partkey from part where p_name like 'forest%')
      and ps_availqty > (select 0.5 * sum(l_quantity) from lineitem
                         where l_partkey = ps_partkey and l_suppkey = ps_suppkey
                           and l_shipdate >= date '1994-01-01'
                           and l_shipdate < date '1994-01-01' + interval '1' year))
  and s_nationkey = n_nationkey and n_name = 'CANADA'
order by s_name""",
            True,
        ),
        21: (
            """
select s_name, count(*) as numwait
from supplier, lineitem l1, orders, nation
where s_suppkey = l1.l_suppkey and o_orderkey = l1.l_orderkey and o_orderstatus = 'F'
  and l1.l_receiptdate > l1.l_commitdate
  and exists (select * from lineitem l2
              where l2.l_orderkey = l1.l_orderkey and l2.l_suppkey <> l1.l_suppkey)
  and not exists (select * from lineitem l3
                  where l3.l_orderkey = l1.l_orderkey and l3.l_suppkey <> l1.l_suppkey
                    and l3.l_receiptdate > l3.l_commitdate)
  and s_nationkey = n_nationkey and n_name = 'SAUDI ARABIA'
group by s_name
order by numwait desc, s_name
limit 100""",
            True,
        ),
        22: (
            """
select cntrycode, count(*) as numcust, sum(c_acctbal) as totacctbal
from (
  select substring(c_phone from 1 for 2) as cntrycode, c_acctbal
  from customer
  where substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17')
    and c_acctbal > (select avg(c_acctbal) from customer
                     where c_acctbal > 0.00
                       and substring(c_phone from 1 for 2)
                           in ('13', '31', '23', '29', '30', '18', '17'))
    and not exists (select * from orders where o_custkey = c_custkey)
) as custsale
group by cntrycode
order by cntrycode""",
            True,
        ),
    }
    return [TpchQuery(n, text.strip(), total) for n, (text, total) in sorted(texts.items())]
