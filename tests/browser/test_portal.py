"""The portal in a real headless Chromium against a real gateway (HTTP on a free port,
in-process) over a real PostgreSQL: an administrator sets up a connection, a developer
discovers, previews, is refused an unselected column and pages through 10,000 rows, the
administrator deletes the connection and sees what was purged; markup in values and
names stays text; app tokens cannot sign in; a sign-in link works once and leaves the
address bar.

With FABRIC_SCREENSHOTS=DIR the walk-through saves the main pages there (the README's
screenshots come from `FABRIC_SCREENSHOTS=docs/screenshots`).
"""

from __future__ import annotations

import pytest
from selenium.webdriver.support.ui import Select

from tests.browser.browser import Page
from tests.browser.portal import Portal
from tests.browser.source import (
    EVENT_ROWS,
    XSS_ALIAS,
    XSS_SCRIPT,
    XSS_TABLE,
    XSS_VALUE,
)

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

PASSWORD = "pg-secret-8c1f"  # trust auth ignores it; the page must never show it back
PAGE_ROWS = 1_000

FIRST_CELLS = (
    "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]"
    ".map(r => r.cells[0].textContent);"
)


def column_ids(page: Page) -> list[str]:
    ids: list[str] = page.script(FIRST_CELLS, "#sql-result")
    return ids


def facts(page: Page, css: str) -> dict[str, str]:
    """A definition list the page shows (counts), as name to text."""
    pairs: dict[str, str] = page.script(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0] + ' dd')]"
        ".map(d => [d.dataset.key, d.textContent]));",
        css,
    )
    return pairs


def choose(page: Page, css: str, value: str) -> None:
    page.until(
        lambda: any(o.get_attribute("value") == value for o in page.all(f"{css} option")) or None,
        f"{css} offering {value}",
    )
    Select(page.find(css)).select_by_value(value)


def create_connection_in_page(page: Page, portal: Portal, name: str) -> None:
    page.click("#conn-new")
    page.type("#conn-form-name", name)
    choose(page, "#conn-form-kind", "postgres")
    form = page.find("#conn-form")
    page.type("input[name='host']", portal.pg_host, form)
    page.type("input[name='port']", "1", form)  # nothing listens there
    page.type("input[name='database']", portal.pg_database, form)
    page.type("input[name='user']", portal.pg_user, form)
    password = page.type("input[name='password']", PASSWORD, form)
    assert password.get_attribute("type") == "password"
    page.click("#conn-form-save")
    # The gateway connects first and stores nothing when that fails: the form says so
    # and stays, with what was typed.
    page.text_of("#conn-form p.error", "not stored")
    assert page.all("article.connection") == []
    page.type("input[name='port']", str(portal.pg_port), form)
    page.click("#conn-form-save")


def test_admin_sets_up_developer_uses_admin_deletes(page: Page, portal: Portal) -> None:
    schema = portal.schema
    # -- administrator: create with a password, test --------------------------------------
    page.sign_in(portal.token("admin", "alice@example.com"))
    page.text_of("#whoami", "alice@example.com · admin")
    create_connection_in_page(page, portal, "shop")
    card = page.find("article.connection[data-name='shop']")
    assert page.find(".badge", card).text == "postgres"
    assert page.text_of("td.password", "set", card).text == "set"
    assert PASSWORD not in page.driver.page_source
    page.click(".conn-test", card)
    assert "OK" in page.text_of(".test-result li.ok", "OK", card).text
    page.screenshot("connections")

    # An edit leaves the password field empty: the stored password stays.
    page.click(".conn-edit", card)
    form = page.find("#conn-form")
    assert page.find("input[name='password']", form).get_attribute("value") == ""
    page.type("input[name='connect_timeout']", "5", form)
    page.click("#conn-form-save")
    shop = "article.connection[data-name='shop']"
    page.text_of(f"{shop} header .muted", "version 2")
    page.text_of(f"{shop} ul.settings li", "connect_timeout = 5")
    assert page.find(f"{shop} td.password").text == "set"

    # -- administrator: discover, look at the keys, select columns ----------------------
    page.tab("discovery")
    choose(page, "#disc-connection", "shop")
    page.type("#disc-schema", schema)
    page.click("#disc-run")
    lines = page.find(f"article.table[data-table='{schema}.order_lines']")
    assert page.find(".pk-line", lines).text == "primary key (order_id, line_no)"
    shipments = page.find(f"article.table[data-table='{schema}.shipments']")
    assert page.find(".fk-line", shipments).text == (
        f"shipments_line_fk: foreign key (order_id, line_no) → {schema}.order_lines "
        "(order_id, line_no)"
    )
    badges = {
        row.get_attribute("data-column"): row.find_elements("css selector", ".badge")
        for row in page.all("tbody tr", lines)
    }
    assert [b.text for b in badges["order_id"]] == ["PK", "FK"]
    assert [b.text for b in badges["product"]] == []
    graph = page.find("#disc-graph svg.keygraph")
    nodes = {n.get_attribute("data-table") for n in page.all("g.table-node", graph)}
    assert {f"{schema}.{t}" for t in ("customers", "orders", "order_lines", "events")} <= nodes
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in page.all("g.fk-edge", graph)
    }
    assert edges == {
        (f"{schema}.orders", f"{schema}.customers"),
        (f"{schema}.order_lines", f"{schema}.orders"),
        (f"{schema}.shipments", f"{schema}.order_lines"),
    }

    customers = page.find(f"article.table[data-table='{schema}.customers']")
    page.click("input.column-check[value='email']", customers)
    page.click(".select-button", customers)
    page.text_of(".select-result.ok", "Selected customers.", customers)
    events = page.find(f"article.table[data-table='{schema}.events']")
    page.click(".select-button", events)
    page.text_of(".select-result.ok", "Selected events.", events)
    selected = page.find("tr.entity[data-entity='customers'] .entity-columns")
    assert selected.text == "id, name, country"
    page.screenshot("discovery")

    # -- developer: no administration shown; preview; refused column; paging -------------
    page.sign_in(portal.token("developer", "dev@example.com"))
    card = page.find("article.connection[data-name='shop']")
    assert page.all(".conn-edit, .conn-delete, .conn-test", card) == []
    assert not any(b.is_displayed() for b in page.all("#conn-new"))
    page.tab("discovery")
    choose(page, "#disc-connection", "shop")
    page.click("tr.entity[data-entity='customers'] .entity-preview")
    preview = page.find("#disc-preview table.grid")
    headers = [h.text for h in page.all("thead .col-name", preview)]
    assert headers == ["id", "name", "country"]
    assert page.script(FIRST_CELLS, "#disc-preview")[:3] == ["1", "2", "3"]

    # A column added at the source shows in the drift report of a refresh.
    portal.source_sql(f"ALTER TABLE {schema}.customers ADD COLUMN vip boolean")
    page.click("#disc-refresh")
    drift = page.text_of("#disc-drift table.drift tbody tr", "vip")
    assert drift.text.startswith("new_column customers")

    page.tab("query")
    choose(page, "#sql-connection", "shop")
    page.type("#sql-text", "SELECT id, email FROM customers")
    page.click("#sql-run")
    refused = page.text_of("#sql-error .error-message", "email")
    assert refused.text == "column 'email' is not selected in any table in scope"

    page.type("#sql-text", "SELECT id, label\nFROM events\nWHERE id = = 3")
    page.click("#sql-run")
    page.text_of("#sql-error .error-position", "line 3, column 12")
    start, end, value = page.script(
        "const t = document.getElementById('sql-text');"
        "return [t.selectionStart, t.selectionEnd, t.value];"
    )
    assert value[start:end] == "=" and start == value.rindex("= 3")

    page.type("#sql-text", "SELECT id, label FROM events WHERE id > :after ORDER BY id")
    page.click("#sql-param-add")
    page.type("#sql-params .param:last-child .param-name", "after")
    page.type("#sql-params .param:last-child .param-value", "0")
    page.type("#sql-page-size", str(PAGE_ROWS))
    page.click("#sql-run")
    seen: list[str] = []
    pages = EVENT_ROWS // PAGE_ROWS
    for number in range(1, pages + 1):
        first = (number - 1) * PAGE_ROWS + 1
        last = first + PAGE_ROWS - 1
        page.text_of(".page-info", f"page {number} · rows {first}\N{EN DASH}{last}")
        ids = column_ids(page)
        assert ids == [str(i) for i in range(first, first + PAGE_ROWS)]
        seen += ids
        if number == 2:
            page.screenshot("sql-editor")
        if number < pages:
            page.click("#sql-next")
    # The source may need one more fetch to say it has no more rows: then an empty page.
    if page.find("#sql-next").is_enabled():
        page.click("#sql-next")
        page.text_of(".page-info", f"page {pages + 1}")
        assert column_ids(page) == []
    page.text_of(".page-info", f"of {EVENT_ROWS}")
    assert not page.find("#sql-next").is_enabled()
    assert seen == [str(i) for i in range(1, EVENT_ROWS + 1)]
    page.click("#sql-prev")
    page.text_of(".page-info", f"rows {EVENT_ROWS - PAGE_ROWS + 1}\N{EN DASH}")
    assert column_ids(page)[0] == str(EVENT_ROWS - PAGE_ROWS + 1)
    summary = page.find("#sql-result .summary").text
    assert "from source" in summary and " ms" in summary

    # Smaller pages: the page keeps the latest 20 to go back through, no more.
    page.type("#sql-page-size", "400")
    page.click("#sql-run")
    for number in range(2, 26):
        page.click("#sql-next")
        page.text_of(".page-info", f"page {number} · ")
    page.text_of(".page-info", f"page 25 · rows 9601\N{EN DASH}10000 of {EVENT_ROWS}")
    for number in range(24, 5, -1):
        page.click("#sql-prev")
        page.text_of(".page-info", f"page {number} · ")
    first = 5 * 400 + 1
    page.text_of(".page-info", f"page 6 · rows {first}\N{EN DASH}{first + 399} of {EVENT_ROWS}")
    assert column_ids(page)[0] == str(first)
    assert not page.find("#sql-prev").is_enabled()

    page.tab("activity")
    shape = page.text_of("#act-history td.sql-shape", "events")
    assert "label" in shape.text
    page.find("#act-stats .figure[data-figure='p95'] .figure-value")
    assert all(not b.is_displayed() for b in page.all("#act-audit-box"))
    page.screenshot("activity")

    # -- administrator: activity, then delete with the purge plan and counts ------------
    page.sign_in(portal.token("admin", "alice@example.com"))
    page.tab("activity")
    page.text_of("#act-audit td.action", "connection.create")
    page.tab("connections")
    page.click("article.connection[data-name='shop'] .conn-delete")
    page.find("#conn-dialog dl.purge-plan")
    plan = facts(page, "#conn-dialog dl.purge-plan")
    assert (plan["entities"], plan["stages"], plan["secrets"]) == ("2", "1", "1")
    page.click("#conn-delete-confirm")
    page.text_of("#conn-deleted", "Deleted shop")
    counts = facts(page, "#conn-dialog dl.purge-counts")
    assert (counts["entities"], counts["secrets_removed"]) == ("2", "1")
    assert all(value.isdigit() for value in counts.values())
    page.gone("article.connection[data-name='shop']")
    assert page.csp_violations() == []


def test_markup_in_values_aliases_and_names_stays_text(page: Page, portal: Portal) -> None:
    admin = portal.token("admin", "alice@example.com")
    portal.create_connection("marked", admin)
    portal.select("marked", "notes", admin)
    page.sign_in(portal.token("developer", "dev@example.com"))

    page.tab("discovery")
    choose(page, "#disc-connection", "marked")
    page.type("#disc-schema", portal.schema)
    page.click("#disc-run")
    name = f"{portal.schema}.{XSS_TABLE}"
    assert page.text_of("article.table h3.table-name", XSS_TABLE).text == name
    graph_names = page.script(
        "return [...document.querySelectorAll('#disc-graph g.table-node > title')]"
        ".map(t => t.textContent);"
    )
    assert name in graph_names  # the box's label is cut to fit; its tooltip is whole

    page.click("tr.entity[data-entity='notes'] .entity-preview")
    page.find("#disc-preview table.grid")
    cells = page.script(
        "return [...document.querySelectorAll('#disc-preview tbody td')].map(c => c.textContent);"
    )
    assert XSS_VALUE in cells and XSS_SCRIPT in cells

    page.tab("query")
    choose(page, "#sql-connection", "marked")
    page.type("#sql-text", f'SELECT body AS "{XSS_ALIAS}" FROM notes ORDER BY id')
    page.click("#sql-run")
    header = page.text_of("#sql-result thead .col-name", "onerror")
    assert header.text == XSS_ALIAS
    assert page.text_of("#sql-result tbody td", "onerror").text == XSS_VALUE

    markup = page.script(
        "return {flag: typeof window.__fabricXss,"
        " images: document.querySelectorAll('img').length,"
        " inline: document.querySelectorAll('script:not([src])').length,"
        " handlers: document.querySelectorAll('[onerror],[onload]').length};"
    )
    assert markup == {"flag": "undefined", "images": 0, "inline": 0, "handlers": 0}
    assert page.no_alert()
    # The policy that would have logged a refused inline handler is the one served, and
    # the page never needed it to refuse anything.
    policy = portal.page_headers()["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.csp_violations() == []


def test_app_token_cannot_sign_in(page: Page, portal: Portal) -> None:
    page.sign_out()
    page.type("#signin-token", portal.token("app", "billing-service"))
    page.click("#signin-submit")
    message = page.text_of("#signin-error", "app")
    assert "cannot sign in" in message.text
    assert not any(a.is_displayed() for a in page.all("#app"))
    assert page.script("return sessionStorage.length;") == 0


def test_sign_in_link_is_used_once_and_leaves_the_address(page: Page, portal: Portal) -> None:
    page.sign_out()
    code = portal.sign_in_code("developer", "dora@example.com")
    page.open(f"#signin={code}")
    page.text_of("#whoami", "dora@example.com · developer")
    assert "signin" not in page.driver.current_url
    assert code not in page.driver.current_url
    token = page.script("return sessionStorage.getItem('fabric.token');")
    assert token and token != code

    # Signing out forgets the session and loads the page afresh.
    page.click("#signout")
    page.find("#signin-token")
    assert page.script("return sessionStorage.length;") == 0
    assert page.script("return document.getElementById('whoami').textContent;") == ""

    # A session the gateway no longer accepts ends in the sign-in form, saying so.
    page.script("sessionStorage.setItem('fabric.token', 'no-longer-valid');")
    page.open()
    page.text_of("#signin-error", "Your session has ended")
    assert page.script("return sessionStorage.getItem('fabric.token');") is None

    page.sign_out()
    page.open(f"#signin={code}")
    page.find("#signin-error")
    assert "signin" not in page.driver.current_url
    assert page.script("return sessionStorage.length;") == 0


def test_admin_cancels_a_running_query(page: Page, portal: Portal) -> None:
    admin = portal.token("admin", "alice@example.com")
    portal.create_connection("slow", admin)
    portal.select("slow", "orders", admin)
    page.sign_in(admin)
    page.tab("query")
    choose(page, "#sql-connection", "slow")
    page.type("#sql-text", "SELECT COUNT(*) AS n FROM orders")
    # The source holds the query at a lock this test owns, until the cancel ends it.
    with portal.table_locked("orders"):
        page.click("#sql-run")
        page.tab("activity")
        row = page.text_of("#act-running tr.running-query", "FROM orders", timeout=30)
        assert "alice@example.com" in row.text
        page.click("#act-running tr.running-query button.cancel-query")
        page.text_of("#notice", "The query on slow cancelled.")
    page.tab("query")
    message = page.find("#sql-error .error-message").text
    assert "cancel" in message
