"""The documentation runs as written: each page's Python blocks (sharing one
interpreter, as a reader pasting them in order would) and its ``keras-lowrank``
commands, in a fresh process in an empty folder, on the backend under test.

A block that cannot run here says why in the Markdown
(``<!-- docs-test: skip: REASON -->`` before its fence); tests/docs_blocks.py
finds them.
"""

import textwrap

import docs_blocks
import keras
import pytest

_BACKEND = keras.backend.backend()
_PAGES = [p for p in docs_blocks.pages() if any(b.runs_on(_BACKEND) for b in docs_blocks.blocks(p))]


def test_every_skip_gives_a_reason_and_some_page_runs():
    # The skip marker's reason is required by its pattern; a page whose blocks
    # are all skipped would test nothing, so list what is skipped and check that
    # the harness found the pages it must (README's quick start among them).
    assert "README.md" in _PAGES
    for page in docs_blocks.pages():
        for block in docs_blocks.blocks(page):
            assert block.skip is None or len(block.skip) > 5, (page, block.line)


def test_blocks_are_found_as_written(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent('''
        ```python
        a = 1
        ```
        <!-- docs-test: skip: needs a GPU -->
        ```python
        b = 2
        ```
        <!-- docs-test: only: jax -->
        ```python
        c = 3
        ```
        ```bash
        make demo   # not ours
        keras-lowrank compress m.keras --data digits \\
            --output runs/x   # a comment
        ```
    '''))
    original = docs_blocks.ROOT
    docs_blocks.ROOT = tmp_path
    try:
        found = docs_blocks.blocks("page.md")
    finally:
        docs_blocks.ROOT = original
    assert [(b.kind, b.skip, b.only) for b in found] == [
        ("python", None, None), ("python", "needs a GPU", None), ("python", None, "jax"), ("command", None, None)]
    assert [b.runs_on("tensorflow") for b in found] == [True, False, False, True]
    assert found[3].source == "keras-lowrank compress m.keras --data digits --output runs/x"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in _PAGES if p not in ("README.md", "docs/guides/data_and_cli.md")])
def test_page_runs_as_written(page, tmp_path):
    """Each guide; README.md and the data guide (the two that take minutes) have files of
    their own, so that ``--dist loadfile`` spreads them over the workers."""
    docs_blocks.run_page(page, _BACKEND, tmp_path)


def test_a_failing_block_or_command_fails_the_page(tmp_path):
    """The harness can fail: a block that raises, and a command that exits non-zero."""
    original = docs_blocks.ROOT
    docs_blocks.ROOT = tmp_path
    try:
        for body in ("```python\nraise ValueError('broken example')\n```\n",
                     "```python\nx = 1\n```\n```bash\n"
                     "keras-lowrank evaluate missing.keras --data digits --output o\n```\n"):
            (tmp_path / "page.md").write_text(body)
            (tmp_path / "run").mkdir(exist_ok=True)
            with pytest.raises(AssertionError, match="does not run as written"):
                docs_blocks.run_page("page.md", _BACKEND, tmp_path / "run")
    finally:
        docs_blocks.ROOT = original
