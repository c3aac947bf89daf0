"""The documentation runs as written: each page's Python blocks (sharing one
interpreter, as a reader pasting them in order would) and its ``keras-lowrank``
commands, in a fresh process in an empty folder, on the backend under test.

A block that cannot run here says why in the Markdown
(``<!-- docs-test: skip: REASON -->`` before its fence); tests/docs_blocks.py
finds them.
"""

import json
import os
import subprocess
import sys
import textwrap

import docs_blocks
import keras
import pytest

_DRIVER = textwrap.dedent('''
    import json, subprocess, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for block in blocks:
        where = f"{block['page']}:{block['line']}"
        print(f"--- {where} ({block['kind']})", flush=True)
        if block["kind"] == "python":
            try:
                exec(compile(block["source"], where, "exec"), namespace)
            except BaseException:
                traceback.print_exc()
                print(f"FAILED BLOCK {where}", flush=True)
                sys.exit(1)
        else:
            done = subprocess.run(block["source"], shell=True)
            if done.returncode != 0:
                print(f"FAILED COMMAND {where}: exit {done.returncode}: {block['source']}", flush=True)
                sys.exit(1)
''')

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
@pytest.mark.parametrize("page", _PAGES)
def test_page_runs_as_written(page, tmp_path):
    runnable = [b for b in docs_blocks.blocks(page) if b.runs_on(_BACKEND)]
    script = tmp_path / "_blocks.json"
    script.write_text(json.dumps([vars(b) for b in runnable]))
    driver = tmp_path / "_driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, KERAS_BACKEND=_BACKEND, MPLBACKEND="Agg",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(docs_blocks.ROOT))
    done = subprocess.run([sys.executable, str(driver), str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    output = done.stdout[-6000:] + done.stderr[-6000:]
    assert done.returncode == 0, f"{page} does not run as written:\n{output}"
