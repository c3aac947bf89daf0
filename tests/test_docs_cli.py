"""docs/guides/data_and_cli.md runs as written: its block that makes a model and data,
then every ``keras-lowrank`` command (its own file: see tests/test_docs.py)."""

import docs_blocks
import keras
import pytest


@pytest.mark.slow
def test_data_and_cli_guide_runs_as_written(tmp_path):
    docs_blocks.run_page("docs/guides/data_and_cli.md", keras.backend.backend(), tmp_path)
