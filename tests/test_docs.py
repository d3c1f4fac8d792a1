"""The documentation stays true to the code: every configuration key and metric is documented
once, every link between the documents resolves, and the README stays a page."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from air_relay.config import Config
from air_relay.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCUMENTS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    """Every configurable key, written as the docs write it (``ingest.tokens[].token``)."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        tp = hints[fld.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            keys |= _leaf_keys(tp, f"{prefix}{fld.name}.")  # type: ignore[arg-type]
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            keys |= _leaf_keys(args[0], f"{prefix}{fld.name}[].")
        elif origin is dict and args and dataclasses.is_dataclass(args[1]):
            keys |= _leaf_keys(args[1], f"{prefix}{fld.name}.<id>.")
        else:
            keys.add(f"{prefix}{fld.name}")
    return keys


def _table_keys(text: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE)


def test_every_configuration_key_is_documented_once() -> None:
    documented = _table_keys((DOCS / "configuration.md").read_text())
    assert len(documented) == len(set(documented)), "a key is in the table twice"
    assert set(documented) == _leaf_keys(Config)


def test_every_metric_is_documented() -> None:
    operations = (DOCS / "operations.md").read_text()
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in operations, f"{name} is not in docs/operations.md"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_between_documents_resolve(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # an outside address
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(resolved), f"{document.name}: no heading for {target}"


def test_readme_is_a_page_and_maps_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for doc in DOCS.glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"README does not point to docs/{doc.name}"


def test_migrations_do_not_promise_a_short_lock_they_cannot_keep() -> None:
    """Each migration file is one transaction, so NOT VALID + VALIDATE keeps the exclusive lock
    through the scan; the comments say so, and the upgrade section warns of it."""
    migrations = sorted((ROOT / "src/air_relay/db/migrations").glob("*.sql"))
    for path in migrations:
        text = path.read_text()
        assert "without holding an exclusive lock" not in text, path.name
        if "VALIDATE CONSTRAINT" in text:
            assert "held through VALIDATE" in text, path.name
    operations = (DOCS / "operations.md").read_text()
    upgrade = operations[operations.index("**Upgrade.**") :]
    assert "quiet moment" in upgrade.split("\n## ")[0]
