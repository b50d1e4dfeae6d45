"""Reading a Parquet file from an open (fsspec) file object, without an abort at interpreter exit.

Handed a Python file object, Arrow wraps it (``PyReadableFile``) and may drop its last reference on one of
its own threads after the read has returned (``pyarrow.parquet.read_table`` does so about every other
call). Dropping it takes the GIL; when that happens while Python is finalizing, the thread is unwound
through a C++ destructor and the process dies with ``terminate called without an active exception``
(exit 134) after its work is done (apache/arrow#34314). So Arrow is never handed a Python object here: the
file's bytes are copied into a buffer Arrow allocated, which any thread frees without the GIL.
"""

from __future__ import annotations

from typing import IO, Callable

import pyarrow as pa
import pyarrow.parquet as pq


def read_parquet(f: IO[bytes], columns: list[str] | Callable[[list[str]], list[str]] | None = None) -> pa.Table:
    """The table in the Parquet file ``f``; ``f`` is only read, not closed. ``columns``: the columns to read,
    or a function that picks them from the file's column names (and may refuse the file); None: all.

    The whole file is fetched and held in memory while it is read, every column of it, even when only some
    are asked for: a part file with ``--embeddings`` (1,280 float32 a row) is fetched whole where its
    ``path`` column would do. A column asked for that is not in the file is an ArrowInvalid, as with
    ``read_table``."""
    data = f.read()
    buffer = pa.allocate_buffer(len(data))
    memoryview(buffer).cast("B")[:] = data
    del data
    with pq.ParquetFile(pa.BufferReader(buffer)) as parquet:
        names = parquet.schema_arrow.names
        if callable(columns):
            columns = columns(names)
        missing = [name for name in columns or [] if name not in names]
        if missing:
            raise pa.ArrowInvalid(f"no column {', '.join(missing)} in the file (its columns: {', '.join(names)})")
        return parquet.read(columns=columns)
