"""The runnable parts of the documentation: every fenced ``python`` block and every
``keras-lowrank`` command of a ``bash`` block, page by page, in order.

A block is skipped only where the Markdown says why, on the line just before its
fence: ``<!-- docs-test: skip: needs a GPU -->``; a block for one backend says which:
``<!-- docs-test: only: tensorflow -->``. Used by tests/test_docs.py.
"""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip:\s*(.+?)\s*-->")
_ONLY = re.compile(r"<!--\s*docs-test:\s*only:\s*(tensorflow|jax)\s*-->")


@dataclasses.dataclass
class Block:
    page: str  # path relative to the repository
    line: int  # 1-based line of the opening fence
    kind: str  # "python" or "command"
    source: str
    skip: str | None  # the reason given in the Markdown, or None
    only: str | None = None  # the one backend it runs on, or None for every backend

    def runs_on(self, backend):
        return self.skip is None and self.only in (None, backend)


def pages():
    """README.md and every Markdown page under docs/, as paths relative to the root."""
    found = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [str(p.relative_to(ROOT)) for p in found]


def _commands(body):
    """The ``keras-lowrank`` commands of a bash block (continuations joined)."""
    joined = re.sub(r"\s*\\\n\s*", " ", body)
    commands = []
    for line in joined.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("keras-lowrank "):
            commands.append(line)
    return commands


def blocks(page):
    """The page's runnable blocks in order (python blocks whole, one entry per
    ``keras-lowrank`` command of a bash block)."""
    lines = (ROOT / page).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match or not match.group(1):
            i += 1
            continue
        lang, start = match.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(lines[i + 1:end])
        before = lines[start - 1] if start else ""
        skip = _SKIP.search(before)
        reason = skip.group(1) if skip else None
        only = _ONLY.search(before)
        only = only.group(1) if only else None
        if lang == "python":
            found.append(Block(page, start + 1, "python", body + "\n", reason, only))
        elif lang in ("bash", "sh", "shell", "console"):
            for command in _commands(body):
                found.append(Block(page, start + 1, "command", command, reason, only))
        i = end + 1
    return found


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


def run_page(page, backend, folder):
    """Runs ``page``'s blocks for ``backend`` in a fresh Python in ``folder``, as a
    reader pasting them in order would; an AssertionError with the output otherwise."""
    runnable = [block for block in blocks(page) if block.runs_on(backend)]
    script = folder / "_blocks.json"
    script.write_text(json.dumps([vars(block) for block in runnable]))
    driver = folder / "_driver.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ, KERAS_BACKEND=backend, MPLBACKEND="Agg",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(driver), str(script)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1800)
    output = done.stdout[-6000:] + done.stderr[-6000:]
    assert done.returncode == 0, f"{page} does not run as written:\n{output}"
