"""Course data: every row says where it comes from, and the GPT-2 figures agree with the architecture."""

import csv

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from glassbox.paths import DATA_DIR

CSV_FILES = sorted(DATA_DIR.glob("*.csv"))


def read_rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("path", CSV_FILES, ids=lambda p: p.name)
def test_every_row_has_a_source(path):
    rows = read_rows(path)
    assert rows, f"{path.name} is empty"
    assert "source" in rows[0], f"{path.name} has no source column"
    for number, row in enumerate(rows, start=2):
        assert row["source"].strip(), f"{path.name} line {number} has no source"


def test_every_data_file_is_listed_in_the_data_readme():
    readme = (DATA_DIR / "README.md").read_text()
    for path in CSV_FILES:
        assert f"`{path.name}`" in readme, f"data/README.md does not describe {path.name}"


@pytest.mark.parametrize("row", read_rows(DATA_DIR / "gpt2_releases.csv"), ids=lambda r: r["hub_name"])
def test_gpt2_parameter_counts_match_their_configs(row):
    config = GPT2Config(n_layer=int(row["n_layer"]), n_head=int(row["n_head"]), n_embd=int(row["n_embd"]))
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    assert sum(p.numel() for p in model.parameters()) == int(row["parameters"])
