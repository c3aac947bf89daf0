"""README.md runs as written (its own file, so that ``pytest -n 2 --dist loadfile``
runs it beside the guides of tests/test_docs.py: each takes minutes)."""

import docs_blocks
import keras
import pytest


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    docs_blocks.run_page("README.md", keras.backend.backend(), tmp_path)
