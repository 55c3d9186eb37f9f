"""The rows a perfect pushdown would move for each TPC-H query over the split of
`benchmarks.tpch_split`, per source.

"Perfect pushdown" here: each source runs the largest part of the query it can answer
from its own tables alone: every filter (including conditions implied by the query's
equalities and OR branches), every join among its own tables, the projection, and every
aggregate or subquery whose input is its own tables only (the whole query when it names
one source). It gets no values from another source (no dynamic filtering) and does not
aggregate ahead of a join with another source (no eager aggregation). An engine that
filters one source by another's join keys can therefore move fewer rows than this figure.

The statements are written by hand, one per piece a source must send (a piece that
serves both a query block and its correlated subquery is sent once), and counted on the
all-in-PostgreSQL reference schema: each names only its own source's tables, so it
returns there exactly what that source would return.
"""

from __future__ import annotations

from collections.abc import Mapping

from benchmarks.tpch_split import DUCKDB, MARIADB, PG

WHOLE = "<the whole query>"
"""The query names one source: that source answers it, moving its result rows."""

_NATION = "select n_nationkey, n_name from nation"
_SUPPLIER_NATION = "select s_suppkey, s_nationkey from supplier"

IDEAL: dict[int, dict[str, list[str]]] = {
    1: {PG: [WHOLE]},
    2: {
        DUCKDB: [
            """select ps_partkey, ps_supplycost, s_nationkey, s_acctbal, s_name, s_address,
                      s_phone, s_comment, p_mfgr
               from part, partsupp, supplier
               where p_partkey = ps_partkey and s_suppkey = ps_suppkey and p_size = 15
                 and p_type like '%BRASS'"""
        ],
        MARIADB: [
            """select n_nationkey, n_name from nation, region
               where n_regionkey = r_regionkey and r_name = 'EUROPE'"""
        ],
    },
    3: {
        MARIADB: ["select c_custkey from customer where c_mktsegment = 'BUILDING'"],
        PG: [
            """select l_orderkey, o_custkey, o_orderdate, o_shippriority, l_extendedprice,
                      l_discount
               from orders, lineitem
               where l_orderkey = o_orderkey and o_orderdate < date '1995-03-15'
                 and l_shipdate > date '1995-03-15'"""
        ],
    },
    4: {PG: [WHOLE]},
    5: {
        # c_nationkey = s_nationkey = n_nationkey: customer joins nation within MariaDB.
        MARIADB: [
            """select c_custkey, c_nationkey, n_name from customer, nation, region
               where c_nationkey = n_nationkey and n_regionkey = r_regionkey
                 and r_name = 'ASIA'"""
        ],
        PG: [
            """select o_custkey, l_suppkey, l_extendedprice, l_discount from orders, lineitem
               where l_orderkey = o_orderkey and o_orderdate >= date '1994-01-01'
                 and o_orderdate < date '1995-01-01'"""
        ],
        DUCKDB: [_SUPPLIER_NATION],
    },
    6: {PG: [WHOLE]},
    7: {
        DUCKDB: [_SUPPLIER_NATION],
        PG: [
            """select l_suppkey, o_custkey, l_shipdate, l_extendedprice, l_discount
               from lineitem, orders
               where o_orderkey = l_orderkey
                 and l_shipdate between date '1995-01-01' and date '1996-12-31'"""
        ],
        # Both OR branches keep n1 and n2 to FRANCE or GERMANY.
        MARIADB: [
            """select c_custkey, n_name from customer, nation
               where c_nationkey = n_nationkey and n_name in ('FRANCE', 'GERMANY')""",
            "select n_nationkey, n_name from nation where n_name in ('FRANCE', 'GERMANY')",
        ],
    },
    8: {
        DUCKDB: [
            "select p_partkey from part where p_type = 'ECONOMY ANODIZED STEEL'",
            _SUPPLIER_NATION,
        ],
        PG: [
            """select l_partkey, l_suppkey, o_custkey, o_orderdate, l_extendedprice,
                      l_discount
               from lineitem, orders
               where l_orderkey = o_orderkey
                 and o_orderdate between date '1995-01-01' and date '1996-12-31'"""
        ],
        MARIADB: [
            """select c_custkey from customer, nation, region
               where c_nationkey = n_nationkey and n_regionkey = r_regionkey
                 and r_name = 'AMERICA'""",
            _NATION,
        ],
    },
    9: {
        # ps_suppkey = l_suppkey = s_suppkey and ps_partkey = l_partkey = p_partkey.
        DUCKDB: [
            """select ps_partkey, ps_suppkey, ps_supplycost, s_nationkey
               from part, partsupp, supplier
               where p_partkey = ps_partkey and s_suppkey = ps_suppkey
                 and p_name like '%green%'"""
        ],
        PG: [
            """select l_partkey, l_suppkey, l_quantity, l_extendedprice, l_discount,
                      o_orderdate
               from lineitem, orders where o_orderkey = l_orderkey"""
        ],
        MARIADB: [_NATION],
    },
    10: {
        MARIADB: [
            """select c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
               from customer, nation where c_nationkey = n_nationkey"""
        ],
        PG: [
            """select o_custkey, l_extendedprice, l_discount from orders, lineitem
               where l_orderkey = o_orderkey and o_orderdate >= date '1993-10-01'
                 and o_orderdate < date '1994-01-01' and l_returnflag = 'R'"""
        ],
    },
    11: {
        # The same rows serve the query block and its subquery.
        DUCKDB: [
            """select ps_partkey, ps_supplycost, ps_availqty, s_nationkey
               from partsupp, supplier where ps_suppkey = s_suppkey"""
        ],
        MARIADB: ["select n_nationkey from nation where n_name = 'GERMANY'"],
    },
    12: {PG: [WHOLE]},
    13: {
        MARIADB: ["select c_custkey from customer"],
        PG: [
            "select o_orderkey, o_custkey from orders where o_comment not like '%special%requests%'"
        ],
    },
    14: {
        PG: [
            """select l_partkey, l_extendedprice, l_discount from lineitem
               where l_shipdate >= date '1995-09-01' and l_shipdate < date '1995-10-01'"""
        ],
        DUCKDB: ["select p_partkey, p_type from part"],
    },
    15: {
        # revenue0 and its maximum are lineitem's alone: only the best supplier(s) move.
        PG: [
            """with revenue0 as (
                 select l_suppkey as supplier_no,
                        sum(l_extendedprice * (1 - l_discount)) as total_revenue
                 from lineitem
                 where l_shipdate >= date '1996-01-01' and l_shipdate < date '1996-04-01'
                 group by l_suppkey)
               select supplier_no, total_revenue from revenue0
               where total_revenue = (select max(total_revenue) from revenue0)"""
        ],
        DUCKDB: ["select s_suppkey, s_name, s_address, s_phone from supplier"],
    },
    16: {DUCKDB: [WHOLE]},
    17: {
        DUCKDB: [
            "select p_partkey from part where p_brand = 'Brand#23' and p_container = 'MED BOX'"
        ],
        # The correlated average is over lineitem alone (l_partkey = p_partkey = outer
        # l_partkey): lineitem keeps only the lines under their part's threshold.
        PG: [
            """select l_partkey, l_extendedprice
               from lineitem, (select l_partkey as part, 0.2 * avg(l_quantity) as small
                               from lineitem group by l_partkey) as threshold
               where l_partkey = part and l_quantity < small"""
        ],
    },
    18: {
        MARIADB: ["select c_custkey, c_name from customer"],
        PG: [
            """select o_orderkey, o_custkey, o_orderdate, o_totalprice, l_quantity
               from orders, lineitem
               where o_orderkey = l_orderkey
                 and o_orderkey in (select l_orderkey from lineitem group by l_orderkey
                                    having sum(l_quantity) > 300)"""
        ],
    },
    19: {
        # Every OR branch needs these shipping terms and a quantity in 1..30.
        PG: [
            """select l_partkey, l_quantity, l_extendedprice, l_discount from lineitem
               where l_shipmode in ('AIR', 'AIR REG')
                 and l_shipinstruct = 'DELIVER IN PERSON'
                 and l_quantity >= 1 and l_quantity <= 30"""
        ],
        DUCKDB: [
            """select p_partkey, p_brand from part
               where (p_brand = 'Brand#12'
                      and p_container in ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG')
                      and p_size between 1 and 5)
                  or (p_brand = 'Brand#23'
                      and p_container in ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK')
                      and p_size between 1 and 10)
                  or (p_brand = 'Brand#34'
                      and p_container in ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG')
                      and p_size between 1 and 15)"""
        ],
    },
    20: {
        DUCKDB: [
            "select s_suppkey, s_name, s_address, s_nationkey from supplier",
            """select ps_partkey, ps_suppkey, ps_availqty from partsupp
               where ps_partkey in (select p_partkey from part where p_name like 'forest%')""",
        ],
        # The correlated sum is over lineitem alone, by (part, supplier).
        PG: [
            """select l_partkey, l_suppkey, sum(l_quantity) from lineitem
               where l_shipdate >= date '1994-01-01' and l_shipdate < date '1995-01-01'
               group by l_partkey, l_suppkey"""
        ],
        MARIADB: ["select n_nationkey from nation where n_name = 'CANADA'"],
    },
    21: {
        DUCKDB: ["select s_suppkey, s_name, s_nationkey from supplier"],
        MARIADB: ["select n_nationkey from nation where n_name = 'SAUDI ARABIA'"],
        # l1, orders and both subqueries are PostgreSQL's: only l1's supplier moves.
        PG: [
            """select l1.l_suppkey from lineitem l1, orders
               where o_orderkey = l1.l_orderkey and o_orderstatus = 'F'
                 and l1.l_receiptdate > l1.l_commitdate
                 and exists (select * from lineitem l2
                             where l2.l_orderkey = l1.l_orderkey
                               and l2.l_suppkey <> l1.l_suppkey)
                 and not exists (select * from lineitem l3
                                 where l3.l_orderkey = l1.l_orderkey
                                   and l3.l_suppkey <> l1.l_suppkey
                                   and l3.l_receiptdate > l3.l_commitdate)"""
        ],
    },
    22: {
        # The average is customer's alone; the NOT EXISTS needs the customers with orders.
        MARIADB: [
            """select c_custkey, substring(c_phone from 1 for 2) as cntrycode, c_acctbal
               from customer
               where substring(c_phone from 1 for 2) in ('13', '31', '23', '29', '30', '18', '17')
                 and c_acctbal > (select avg(c_acctbal) from customer
                                  where c_acctbal > 0.00
                                    and substring(c_phone from 1 for 2)
                                        in ('13', '31', '23', '29', '30', '18', '17'))"""
        ],
        PG: ["select distinct o_custkey from orders"],
    },
}


def statements(number: int, whole: str) -> Mapping[str, list[str]]:
    """Query `number`'s ideal statements per source, WHOLE replaced by `whole` (the query's
    own text)."""
    return {
        source: [whole if text == WHOLE else text for text in texts]
        for source, texts in IDEAL[number].items()
    }


def perfect_rows(conn: object, number: int, whole: str) -> dict[str, int]:
    """Rows each source would move for query `number` under perfect pushdown, counted on
    the reference (`conn`: a psycopg connection whose search_path is the TPC-H schema)."""
    moved: dict[str, int] = {}
    for source, texts in statements(number, whole).items():
        total = 0
        for text in texts:
            row = conn.execute(f"select count(*) from ({text}) as piece").fetchone()  # type: ignore[attr-defined]
            total += int(row[0])
        moved[source] = total
    return moved
