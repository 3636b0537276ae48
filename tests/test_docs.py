"""The documentation says what the code does: the wire format's fields, and
every page reachable from the index through links that lead somewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from redis_logstream.shipping.wire import Encoder
from support.quickstart_site import ROOT

DOCS = ROOT / "docs"
_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
_FIELD_ROW = re.compile(r"^\| `(?P<name>\w+)` \| (?P<type>[^|]+) \| (?P<present>[^|]+) \|")


def documented_fields() -> dict[str, tuple[str, str]]:
    """The field table of wire-format.md: name -> (JSON type, when present)."""
    text = (DOCS / "wire-format.md").read_text()
    table = text.split("## Fields", 1)[1].split("\n\n", 2)[1]
    rows = [m for m in map(_FIELD_ROW.match, table.splitlines()) if m]
    assert len(rows) == len({m["name"] for m in rows})
    return {m["name"]: (m["type"], m["present"]) for m in rows}


def encoded(*items: tuple[str, int, float, str, object]) -> list[dict[str, object]]:
    encode = Encoder(max_message_bytes=256)
    return [json.loads(encode(item)[1]) for item in items]


def test_every_field_the_encoder_writes_is_documented_and_no_other() -> None:
    plain, cut, odd = encoded(
        ("checkout started", 20, 1764028888.1234567, "shop.views", "User.alice"),
        ("x" * 1000, 40, 1764028888.0, "shop.views", None),
        ("m", 25, float("nan"), "root", None),
    )
    documented = documented_fields()
    assert set(documented) == set(plain) | set(cut) | set(odd)
    always = {name for name, (_type, present) in documented.items() if present == "always"}
    assert always == set(plain) == set(odd) == set(cut) - {"truncated"}
    assert cut["truncated"] is True and documented["truncated"][0] == "`true`"
    nullable = {name for name, (kind, _present) in documented.items() if "null" in kind}
    assert nullable == {name for name, value in odd.items() if value is None}


def test_the_wire_format_gives_the_timestamp_in_the_form_the_encoder_writes() -> None:
    text = (DOCS / "wire-format.md").read_text()
    example = re.search(r"```json\n(.*?)\n```", text, re.S)[1]
    record = json.loads(example)
    _route, data = Encoder()(
        (
            record["message"],
            record["levelno"],
            record["timestamp"],
            record["logger"],
            record["context"],
        )
    )
    written = json.loads(data)
    assert list(written) == list(record)  # the same fields, in the same order
    assert data.split(b'"timestamp":')[1].split(b",")[0] == b"1764028888.1234567"
    assert "1764028888.1234567" in text


def links(page: Path) -> list[tuple[str, str]]:
    return [(m["text"], m["target"]) for m in _LINK.finditer(page.read_text())]


def test_every_doc_page_is_listed_by_the_index() -> None:
    linked = {target.split("#")[0] for _text, target in links(DOCS / "index.md")}
    pages = {page.name for page in DOCS.glob("*.md")} - {"index.md"}
    assert pages - linked == set()


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings."""
    slugs = set()
    prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for line in prose.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


@pytest.mark.parametrize("page", [*sorted(p.name for p in DOCS.glob("*.md")), "../README.md"])
def test_links_between_pages_lead_to_a_page_and_heading_that_exist(page: str) -> None:
    source = DOCS / page
    for _text, target in links(source):
        if re.match(r"\w+:", target):
            continue  # http(s), mailto: not ours to check here
        path, _, anchor = target.partition("#")
        destination = (source.parent / path).resolve() if path else source
        assert destination.exists(), f"{page}: {target}"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination), f"{page}: {target}"


def test_links_to_the_wire_format_reach_its_page() -> None:
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for text, target in links(page):
            if "wire format" in text.lower():
                assert target.split("#")[0].endswith("wire-format.md"), f"{page.name}: {target}"
