"""Reading a Parquet file from an open (fsspec) file object, without an abort at interpreter exit.

``pyarrow.parquet.read_table(f)`` on a Python file object goes through Arrow's dataset scanner: the scan's
last reference to the file can be dropped on one of Arrow's own threads after ``read_table`` has returned.
Dropping it takes the GIL; when that happens while Python is finalizing, the thread is unwound through a
C++ destructor and the process dies with ``terminate called without an active exception`` (exit 134) after
its work is done (apache/arrow#34314). ``ParquetFile`` reads in the calling thread and is closed there, so
no Arrow thread outlives the read holding the file.
"""

from __future__ import annotations

from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq


def read_parquet(f: IO[bytes], columns: list[str] | None = None) -> pa.Table:
    """The table in the Parquet file ``f`` (only ``columns``, if given); ``f`` is only read, not closed."""
    with pq.ParquetFile(f) as parquet:
        return parquet.read(columns=columns)
