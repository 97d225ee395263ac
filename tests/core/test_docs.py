"""The documentation: the README as a front page, docs/'s generated parts current (qlcp.core.docgen),
every relative link resolving."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qlcp.core import docgen
from qlcp.core.config import Config

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: every Markdown file a reader reaches from the README
PAGES = [README, REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: written on other branches of issue 26 (stage, codekey); checked like any other link once present
PENDING = {REPO / "docs" / "adding-a-stage.md", REPO / "docs" / "upgrading.md"}


@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_docs_generated_part_is_current(name):
    """docs/design.md's stage table and docs/configuration.md's reference are what the code generates:
    after a change, ``python -m qlcp.core.docgen`` rewrites them."""
    rel, _ = docgen.GENERATED[name]
    text = (REPO / rel).read_text()
    assert docgen.generated_text(name, text) == text, f"{rel} is out of date: run python -m qlcp.core.docgen"


def test_docs_stage_table_is_in_design_doc():
    from qlcp.core.stages import STAGES, markdown_table

    design = (REPO / "docs" / "design.md").read_text()
    assert markdown_table().strip() in design
    assert all(f"**{s.name}**" in design for s in STAGES)


def test_docs_config_reference_lists_every_key_with_its_description():
    md = docgen.config_markdown()
    for key, field in Config.model_fields.items():
        row = next((line for line in md.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        assert field.description and " ".join(field.description.split()).replace("|", "\\|") in row, key
    assert "Other settings" not in md       # every key is in a group of docgen.CONFIG_GROUPS


def test_docgen_check_reports_a_stale_file(tmp_path, capsys):
    for rel, _ in docgen.GENERATED.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    assert docgen.main([str(tmp_path), "--check"]) == 0
    stale = tmp_path / "docs" / "configuration.md"
    stale.write_text(stale.read_text().replace("| `aper` |", "| `aperture` |"))
    assert docgen.main([str(tmp_path), "--check"]) == 1
    assert "docs/configuration.md: out of date" in capsys.readouterr().out
    assert docgen.main([str(tmp_path)]) == 0 and stale.read_text() == (REPO / "docs" / "configuration.md").read_text()


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for page in ("docs/operating.md", "docs/configuration.md", "docs/outputs.md", "docs/design.md",
                 "bench/README.md"):
        assert f"]({page})" in text, page


def test_readme_test_command_is_the_one_ci_runs():
    """``.ci/run`` runs the README's test command on a fresh clone: the two must not drift apart."""
    ci = (REPO / ".ci" / "run").read_text()
    (command,) = [line.strip() for line in ci.splitlines() if "-m pytest" in line and not line.startswith("#")]
    assert command in README.read_text()


def test_readme_and_design_show_the_folder_of_each_import_name():
    import tomllib

    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for page in (README, REPO / "docs" / "design.md"):
        text = page.read_text()
        for name, folder in mapping.items():
            if name != "qlcp":
                assert re.search(rf"\| `{re.escape(name)}` \| \[?`{re.escape(folder)}/`", text), (page.name, name)


def _prose(page: Path) -> str:
    """The page without its code blocks (a ``# comment`` there is no heading, a ``](x)`` no link)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


def _links(page: Path):
    text = _prose(page)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_relative_links_resolve(page):
    """Every relative link of the README, bench/README.md and docs/ names a file that exists, and its
    ``#anchor`` a heading of that file."""
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if dest in PENDING and not dest.exists():
            continue
        assert dest.exists(), f"{page.relative_to(REPO)}: {target}"
        if anchor and dest.suffix == ".md":
            heads = [re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                     for h in re.findall(r"^#+ (.*)$", _prose(dest), flags=re.M)]
            assert anchor in heads, f"{page.relative_to(REPO)}: {target}"
