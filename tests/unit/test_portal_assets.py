"""The portal's shipped files keep the rules its Content-Security-Policy and its
offline use depend on: no inline script or style, no markup built from strings, nothing
loaded from elsewhere, and every module import resolving to a shipped file.

The browser tests show the page working; this checks what a browser cannot see, such
as an innerHTML that no test happened to reach."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "fabric" / "api" / "http" / "static"
MODULES = sorted((STATIC / "js").glob("*.js"))

# Ways to turn a string into markup or code: none may appear in the portal's scripts.
FORBIDDEN = (
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "eval(",
    "new Function",
    'setTimeout("',
    'setInterval("',
    ".style.cssText",
    'setAttribute("style"',
    "javascript:",
)
IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+"([^"]+)";""", re.MULTILINE | re.DOTALL)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"<{tag} {name}=...>")
            if name in ("src", "href") and value and re.match(r"^(https?:)?//", value):
                self.problems.append(f"<{tag} {name}={value}> loads from elsewhere")
        if tag == "script":
            if not names.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(str(names["src"]))
        if tag == "style":
            self.problems.append("inline <style>")


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() -> None:
    page = _Page()
    page.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert page.problems == []
    assert page.scripts == ["/static/js/main.js"]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_modules_build_markup_only_with_dom_apis(module: Path) -> None:
    source = module.read_text(encoding="utf-8")
    assert [word for word in FORBIDDEN if word in source] == []
    assert not re.search(r"""(?:from|import)\s*\(?\s*["'](?:https?:)?//""", source)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_imports_resolve_to_shipped_files(module: Path) -> None:
    for target in IMPORT.findall(module.read_text(encoding="utf-8")):
        assert target.startswith("./"), f"{module.name} imports {target}"
        assert (module.parent / target).is_file(), f"{module.name} imports missing {target}"


def test_every_module_is_reachable_from_the_entry_point() -> None:
    reached: set[str] = set()
    todo = ["main.js"]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        source = (STATIC / "js" / name).read_text(encoding="utf-8")
        todo += [t.removeprefix("./") for t in IMPORT.findall(source)]
    assert reached == {m.name for m in MODULES}
