"""Parquet read from an open file leaves no Arrow thread holding the file: such a thread aborted processes
at exit (exit 134 after `pipeline show` had printed everything)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.parquet_files import read_parquet


def test_nothing_of_arrow_holds_the_file_once_the_read_returns(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"path": [f"/{i}.jpg" for i in range(5000)], "score": list(range(5000))}), path)
    fs = fsspec.filesystem("file")
    for _ in range(50):  # pq.read_table returned with the file still referenced by its scan in about half
        with fs.open(str(path), "rb") as f:
            before = sys.getrefcount(f)
            table = read_parquet(f, columns=["path"])
            assert sys.getrefcount(f) == before  # nothing of Arrow's holds the file any more
        assert table.column_names == ["path"] and table.num_rows == 5000


def test_a_column_the_file_lacks_is_an_arrow_error_as_with_read_table(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"path": ["/a.jpg"]}), path)
    with open(path, "rb") as f, pytest.raises(pa.ArrowInvalid, match="no column error in the file"):
        read_parquet(f, columns=["path", "error"])


def test_the_columns_can_be_picked_from_the_file_s_own_names(tmp_path):
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"path": ["/a.jpg"], "label": ["cat"], "extra": [1]}), path)
    seen = []
    with open(path, "rb") as f:
        table = read_parquet(f, columns=lambda names: seen.extend(names) or [n for n in names if n != "extra"])
    assert seen == ["path", "label", "extra"] and table.column_names == ["path", "label"]


def test_no_module_reads_parquet_files_through_the_dataset_scanner():
    package = Path(__file__).resolve().parents[1] / "pipeline"
    offenders = [f"{source.relative_to(package.parent)}:{number}"
                 for source in package.rglob("*.py") if source.name != "parquet_files.py"  # it says why
                 for number, line in enumerate(source.read_text().splitlines(), start=1)
                 if re.search(r"\bread_table\(", line)]
    assert offenders == [], "use pipeline.parquet_files.read_parquet (see its docstring)"
