"""The benchmark table's layout, checked on made-up figures (no notebook is run, no time asserted)."""

from __future__ import annotations

import sys

from glassbox.paths import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "scripts"))
import bench  # noqa: E402  (scripts/ is not a package)

ROWS = [
    bench.Row("notebooks/00_setup_check.ipynb", 5.0, 350.0),
    bench.Row("notebooks/02_anatomy.ipynb", 12.25, 900.4),
]
FALLBACKS = [
    bench.Row(bench.NO_HUB_ROW, 0.031, None, "chose tinygpt: no connection"),
    bench.Row(bench.SILENT_HUB_ROW, 3.004, None, "chose tinygpt: no answer within 3 s"),
]


def test_table_has_a_row_per_notebook_then_totals_then_fallback() -> None:
    lines = bench.format_table(ROWS, FALLBACKS).splitlines()
    assert lines[0].split() == ["notebook", "seconds", "peak", "MB"]
    names = [line.split("  ")[0].strip() for line in lines if not line.startswith("-")]
    assert names == ["notebook", *(row.name for row in ROWS), "total (seconds) / max (MB)", bench.NO_HUB_ROW, bench.SILENT_HUB_ROW]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[-2:] == ["17.25", "900"]  # seconds add up; memory is the largest peak
    assert lines[-2].split()[-2:] == ["0.03", "-"]
    assert lines[-1].split()[-2:] == ["3.00", "-"]


def test_columns_line_up() -> None:
    lines = bench.format_table(ROWS, FALLBACKS).splitlines()
    assert len({len(line) for line in lines}) == 1


def test_previous_run_is_shown_with_differences() -> None:
    previous = {
        "notebooks/00_setup_check.ipynb": bench.Row("notebooks/00_setup_check.ipynb", 6.0, 340.0),
        bench.NO_HUB_ROW: bench.Row(bench.NO_HUB_ROW, 3.0, None),
    }
    lines = bench.format_table(ROWS, FALLBACKS, previous).splitlines()
    assert lines[0].split() == ["notebook", "seconds", "before", "delta", "peak", "MB", "before", "delta"]
    first = next(line for line in lines if line.startswith("notebooks/00"))
    assert first.split()[1:] == ["5.00", "6.00", "-1.00", "350", "340", "+10"]
    new = next(line for line in lines if line.startswith("notebooks/02"))
    assert new.split()[1:] == ["12.25", "-", "-", "900", "-", "-"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[-6:] == ["17.25", "6.00", "+11.25", "900", "340", "+560"]
    assert lines[-2].split()[-6:] == ["0.03", "3.00", "-2.97", "-", "-", "-"]  # not in the previous total
    assert lines[-1].split()[-6:] == ["3.00", "-", "-", "-", "-", "-"]


def test_failed_notebook_is_marked() -> None:
    table = bench.format_table([bench.Row("notebooks/03_x.ipynb", None, None, "FAILED")])
    assert "notebooks/03_x.ipynb  [FAILED]" in table


def test_saved_file_name_is_safe() -> None:
    assert bench.saved_path("gpt2-untrained").name == "last_gpt2-untrained.json"
    assert bench.saved_path("../models/my model").name == "last_.._models_my_model.json"
