"""Read list files and S3 Inventory reports as a stream of Arrow chunks of raw entries.

For 10-100 million paths a list file cannot become one Python list: ``iter_table_entries`` reads it
incrementally and yields ``pa.Array`` chunks of strings (``pa.string()`` or ``pa.large_string()``), each
at most ``chunk_rows`` long, with null and empty entries dropped. Entries are yielded as the file spells
them (no path normalisation: the caller does that), except as noted per format:

- ``.txt`` / ``.lst`` (and ``.txt.gz`` / ``.lst.gz``): one entry per line, split with Arrow kernels (no
  CSV parsing, so commas, quotes and spaces inside names are kept). Leading/trailing whitespace (and a
  ``\\r``) is stripped; blank lines and lines whose first non-space character is ``#`` are dropped; a
  UTF-8 byte-order mark at the start is dropped.
- ``.csv`` (and ``.csv.gz``): a header row, RFC 4180 quoting; the ``path_column`` column, as is.
- ``.parquet``: the ``path_column`` column (text, dictionary-encoded text or UTF-8 binary), as is.
- ``manifest.json`` of an S3 Inventory report (CSV or Parquet; ORC is refused): full URLs
  ``s3://<sourceBucket>/<key>`` of the objects it lists. Folder markers (keys ending in ``/``) are
  dropped, and in a report of all versions only the latest version of objects that are not delete
  markers is kept (``IsLatest`` / ``IsDeleteMarker`` columns, where the report has them).

Where an inventory's data files are looked for:

- manifest on a store (``s3://dest-bucket/.../manifest.json``): ``<protocol>://<destination bucket>/<key>``,
  with the protocol of the manifest's own URL and the bucket from ``destinationBucket``
  (``arn:aws:s3:::dest-bucket`` or a bare name). That is where S3 writes them.
- manifest on local disk (a downloaded report): ``<folder of manifest.json>/<base name of key>``; copy the
  data files next to the manifest. No other place is searched; a missing data file is a UserError that
  names where it was looked for.

Key decoding of CSV inventories: S3 writes the ``Key`` column URL-encoded in the form style (a space
becomes ``+``, a literal ``+`` becomes ``%2B``, non-ASCII is percent-encoded UTF-8), so keys are decoded
with ``urllib.parse.unquote_plus`` (strict UTF-8). Only the keys containing ``%`` or ``+`` go through
Python (found with a vectorised match); the rest stay in Arrow. Parquet inventories hold keys as they are.

Opening a file (with its first read: the HEAD and first GET on a store) is retried with
``pipeline.storage_retry.with_retries`` ("read list file"); later reads rely on the storage client's own
retries, and a failure there raises StorageError. A missing file, a damaged or undecodable file and a
missing column are UserErrors naming the file.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import zlib
from typing import Callable, Iterator
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.storage_retry import DEFAULT_RETRIES, StorageError, store_name, with_retries

TABLE_SUFFIXES = (".txt", ".lst", ".csv", ".parquet", ".csv.gz", ".txt.gz", ".lst.gz")
MANIFEST_NAME = "manifest.json"
TEXT_BLOCK_BYTES = 4 << 20  # bytes read (after decompression) per step of a text list
CSV_BLOCK_BYTES = 4 << 20  # Arrow CSV reader block: bounds memory; a CSV row must fit in one
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this means the file is not a text list
UTF8_BOM = b"\xef\xbb\xbf"
# Errors that mean the bytes are bad, not the store: never retried (gzip's are OSErrors, EOFError for a cut file).
DAMAGE = (gzip.BadGzipFile, EOFError, zlib.error, pa.ArrowException, UnicodeDecodeError)


class _Damaged(ValueError):
    """A file that cannot be read as what its name says. A ValueError, so ``with_retries`` does not retry it."""


def is_table(path: str) -> bool:
    """Whether ``path`` names a list file or an S3 Inventory manifest (by its name, case-insensitive)."""
    lower = path.lower().rstrip("/")
    return lower.endswith(TABLE_SUFFIXES) or posixpath.basename(lower.replace("\\", "/")) == MANIFEST_NAME


def iter_table_entries(fs, path: str, location: str, path_column: str = "path", chunk_rows: int = 65536,
                       retries: int = DEFAULT_RETRIES) -> Iterator[pa.Array]:
    """The entries of the list file or inventory manifest at ``path`` on ``fs``, as string Arrays of at
    most ``chunk_rows`` entries, in file order. ``location`` is how the user spelled it (a URL or a local
    path): error messages name it, and inventory data files are located from it."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    lower = path.lower()
    if posixpath.basename(lower.replace("\\", "/")) == MANIFEST_NAME:
        yield from _inventory_entries(fs, path, location, chunk_rows, retries)
    elif lower.endswith(".parquet"):
        yield from _parquet_entries(fs, path, location, path_column, chunk_rows, retries)
    elif lower.endswith((".csv", ".csv.gz")):
        yield from _csv_entries(fs, path, location, path_column, chunk_rows, retries)
    elif lower.endswith((".txt", ".lst", ".txt.gz", ".lst.gz")):
        yield from _text_entries(fs, path, location, chunk_rows, retries)
    else:
        raise UserError(f"'{location}' is not a list file: expected one of {', '.join(TABLE_SUFFIXES)} "
                        f"or an S3 Inventory {MANIFEST_NAME}")


# -- opening and errors ------------------------------------------------------------------------------


def _open(fs, path: str, location: str, retries: int, prepare: Callable, what: str = "list file",
          compressed: bool = False, missing: str = ""):
    """``prepare(f)`` on ``fs.open(path)`` (gunzipped when ``compressed``), retried as one call; returns
    ``(f, prepare's result)``. ``prepare`` does the first read, so a store that fails there is retried too."""
    def attempt():
        f = fs.open(path, "rb", compression="gzip" if compressed else None)
        try:
            return f, prepare(f)
        except DAMAGE as err:
            f.close()
            raise _Damaged(_damage_text(err)) from err
        except BaseException:
            f.close()
            raise

    try:
        return with_retries("read list file", location, attempt, retries)
    except FileNotFoundError as err:
        raise UserError(f"{what} '{location}' does not exist{missing}") from err
    except IsADirectoryError as err:
        raise UserError(f"{what} '{location}' is a folder, not a file") from err
    except _Damaged as err:
        raise UserError(f"{what} '{location}' cannot be read ({err}); is it damaged or not what its name "
                        "says?") from err
    except PermissionError as err:
        raise UserError(f"{what} '{location}' cannot be read: permission denied ({err})") from err


def _damage_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}"


def _guarded(chunks: Iterator[pa.Array], f, location: str, what: str = "list file") -> Iterator[pa.Array]:
    """``chunks``, with errors past the opening turned into one-line messages, and ``f`` closed at the end."""
    try:
        yield from chunks
    except (UserError, StorageError):
        raise
    except DAMAGE as err:
        raise UserError(f"{what} '{location}' cannot be read ({_damage_text(err)}); is it damaged or not what "
                        "its name says?") from err
    except OSError as err:
        raise StorageError(f"{store_name(location)}: read list file '{location}' failed part-way "
                           f"({_damage_text(err)}); the store may be throttling or down: wait and re-run "
                           "(nothing committed is lost), or raise --read-retries") from err
    finally:
        f.close()


def _nonempty(array: pa.Array) -> pa.Array:
    """``array`` without nulls and empty strings."""
    if len(array) == 0:
        return array
    return array.filter(pc.greater(pc.binary_length(array), 0))  # a null length is dropped too


def _sliced(array: pa.Array, chunk_rows: int) -> Iterator[pa.Array]:
    """``array`` in zero-copy slices of at most ``chunk_rows``; nothing for an empty array."""
    for start in range(0, len(array), chunk_rows):
        yield array.slice(start, chunk_rows)


def _as_text(array: pa.Array, location: str, column: str, what: str = "list file") -> pa.Array:
    """``array`` as string or large_string: dictionary-encoded text is decoded, binary checked as UTF-8."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.dictionary_decode()
        kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return array
    if pa.types.is_string_view(kind):
        return array.cast(pa.large_string())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        try:
            return array.cast(pa.large_string())
        except pa.ArrowInvalid as err:
            raise UserError(f"{what} '{location}': column '{column}' holds bytes that are not UTF-8 text") from err
    raise UserError(f"{what} '{location}': column '{column}' holds {kind}, not text paths")


# -- text lists --------------------------------------------------------------------------------------


def _text_entries(fs, path: str, location: str, chunk_rows: int, retries: int) -> Iterator[pa.Array]:
    f, first = _open(fs, path, location, retries, lambda f: f.read(TEXT_BLOCK_BYTES),
                     compressed=path.lower().endswith(".gz"))
    if first.startswith(UTF8_BOM):
        first = first[len(UTF8_BOM):]
    return _guarded(_text_chunks(f, first, location, chunk_rows), f, location)


def _text_chunks(f, pending: bytes, location: str, chunk_rows: int) -> Iterator[pa.Array]:
    """Whole lines, a block at a time: ``pending`` holds what was read past the last newline."""
    while True:
        data = f.read(TEXT_BLOCK_BYTES)
        if not data:
            break
        pending = pending + data if pending else data
        cut = pending.rfind(b"\n")
        if cut < 0:
            if len(pending) > MAX_LINE_BYTES:
                raise UserError(f"list file '{location}' has a line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                "is it a text list (one path per line)?")
            continue
        block, pending = memoryview(pending)[:cut], pending[cut + 1:]
        yield from _sliced(_text_lines(block, location), chunk_rows)
    if pending:
        yield from _sliced(_text_lines(memoryview(pending), location), chunk_rows)


def _text_lines(block: memoryview, location: str) -> pa.Array:
    """The entries of whole lines in ``block``: split, stripped, blanks and '#' comments dropped."""
    offsets = pa.array([0, len(block)], pa.int32()).buffers()[1]
    whole = pa.StringArray.from_buffers(1, offsets, pa.py_buffer(block))  # zero-copy: one string, the block
    try:
        whole.validate(full=True)  # UTF-8 check: the string kernels below assume valid text
    except pa.ArrowInvalid as err:
        raise UserError(f"list file '{location}' is not UTF-8 text; write one path per line in UTF-8") from err
    lines = pc.utf8_trim_whitespace(pc.list_flatten(pc.split_pattern(whole, "\n")))
    keep = pc.and_(pc.greater(pc.binary_length(lines), 0), pc.invert(pc.starts_with(lines, "#")))
    return lines.filter(keep)


# -- CSV and Parquet lists ---------------------------------------------------------------------------


def _csv_entries(fs, path: str, location: str, path_column: str, chunk_rows: int,
                 retries: int) -> Iterator[pa.Array]:
    compressed = path.lower().endswith(".gz")
    read_options = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=True)
    convert = pacsv.ConvertOptions(include_columns=[path_column], column_types={path_column: pa.string()})

    def start(f):
        try:
            return pacsv.open_csv(f, read_options=read_options, convert_options=convert)
        except pa.ArrowKeyError:  # no such column: say which ones it has (the header alone)
            return None

    f, reader = _open(fs, path, location, retries, start, compressed=compressed)
    if reader is None:  # read the header again, all of it, to name the columns there are
        f.close()
        f, reader = _open(fs, path, location, retries, lambda f: pacsv.open_csv(f, read_options=read_options),
                          compressed=compressed)
        names = reader.schema.names
        f.close()
        raise UserError(f"list file '{location}' has no '{path_column}' column (columns: {names})")

    def chunks():
        for batch in reader:
            yield from _sliced(_nonempty(batch.column(0)), chunk_rows)

    return _guarded(chunks(), f, location)


def _parquet_entries(fs, path: str, location: str, path_column: str, chunk_rows: int,
                     retries: int) -> Iterator[pa.Array]:
    f, parquet = _open(fs, path, location, retries, pq.ParquetFile)
    names = parquet.schema_arrow.names
    if path_column not in names:
        f.close()
        raise UserError(f"list file '{location}' has no '{path_column}' column (columns: {names})")

    def chunks():
        for batch in parquet.iter_batches(columns=[path_column], batch_size=chunk_rows):
            yield from _sliced(_nonempty(_as_text(batch.column(0), location, path_column)), chunk_rows)

    return _guarded(chunks(), f, location)


# -- S3 Inventory --------------------------------------------------------------------------------------


def _inventory_entries(fs, path: str, location: str, chunk_rows: int, retries: int) -> Iterator[pa.Array]:
    what = "S3 Inventory manifest"
    f, raw = _open(fs, path, location, retries, lambda f: f.read())  # "list file '...' does not exist"
    f.close()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{what} '{location}' is not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise UserError(f"{what} '{location}' is not an S3 Inventory manifest (a JSON object)")
    missing = [k for k in ("sourceBucket", "fileFormat", "files") if k not in manifest]
    if missing:
        raise UserError(f"{what} '{location}' lacks {', '.join(missing)}: is it an S3 Inventory manifest.json?")
    file_format = str(manifest["fileFormat"]).strip().lower()
    if file_format == "orc":
        raise UserError(f"{what} '{location}' describes an ORC inventory, which is not supported: configure the "
                        "inventory with the CSV or Parquet output format")
    if file_format not in ("csv", "parquet"):
        raise UserError(f"{what} '{location}' has fileFormat '{manifest['fileFormat']}'; expected CSV or Parquet")
    files = manifest["files"]
    if not isinstance(files, list) or not all(isinstance(e, dict) and e.get("key") for e in files):
        raise UserError(f"{what} '{location}': 'files' must be a list of {{\"key\": ...}} entries")
    prefix = f"s3://{manifest['sourceBucket']}/"
    columns = _csv_schema(manifest, location) if file_format == "csv" else None
    for entry in files:
        data_path, data_location = _data_file(fs, path, location, manifest, entry["key"])
        if file_format == "csv":
            yield from _inventory_csv(fs, data_path, data_location, columns, prefix, chunk_rows, retries)
        else:
            yield from _inventory_parquet(fs, data_path, data_location, prefix, chunk_rows, retries)


def _data_file(fs, path: str, location: str, manifest: dict, key: str) -> tuple[str, str]:
    """(path on ``fs``, location for messages) of the inventory data file ``key`` (rule: module docstring)."""
    if storage.is_url(location):
        protocol, _, rest = location.partition("://")
        destination = str(manifest.get("destinationBucket") or "").strip()
        # S3 writes the manifest into the destination bucket too: its own bucket stands in for a missing field
        bucket = destination.rsplit(":::", 1)[-1].strip("/") or rest.split("/", 1)[0]
        return f"{bucket}/{key.lstrip('/')}", f"{protocol}://{bucket}/{key.lstrip('/')}"
    name = posixpath.basename(key)
    return f"{fs._parent(path)}/{name}", os.path.join(os.path.dirname(location), name)


def _where(location: str) -> str:
    if storage.is_url(location):
        return " (the manifest's destinationBucket and key)"
    return (": for a manifest on local disk, its data files are looked for next to manifest.json, by the "
            "base name of their key; copy them there")


def _csv_schema(manifest: dict, location: str) -> list[str]:
    schema = manifest.get("fileSchema")
    columns = [c.strip() for c in str(schema or "").split(",")]
    if not schema or not all(columns):
        raise UserError(f"S3 Inventory manifest '{location}' has no usable fileSchema (a comma-separated "
                        f"column list such as 'Bucket, Key, Size'): {schema!r}")
    if "key" not in [c.lower() for c in columns]:
        raise UserError(f"S3 Inventory manifest '{location}': its fileSchema has no Key column ({schema})")
    return columns


def _column(names: list[str], wanted: str) -> str | None:
    """The name in ``names`` that is ``wanted`` ignoring case and '_' (IsLatest = is_latest), or None."""
    wanted = wanted.lower().replace("_", "")
    return next((n for n in names if n.lower().replace("_", "") == wanted), None)


def _inventory_csv(fs, path: str, location: str, columns: list[str], prefix: str, chunk_rows: int,
                   retries: int) -> Iterator[pa.Array]:
    key = _column(columns, "Key")
    latest, deleted = _column(columns, "IsLatest"), _column(columns, "IsDeleteMarker")
    include = [c for c in (key, latest, deleted) if c]
    read_options = pacsv.ReadOptions(column_names=columns, block_size=CSV_BLOCK_BYTES, use_threads=True)
    convert = pacsv.ConvertOptions(include_columns=include, column_types={c: pa.string() for c in include})
    what = "S3 Inventory data file"
    f, reader = _open(fs, path, location, retries,
                      lambda f: pacsv.open_csv(f, read_options=read_options, convert_options=convert),
                      what=what, compressed=path.lower().endswith(".gz"), missing=_where(location))

    def chunks():
        for batch in reader:
            keep = _current(batch.column(latest) if latest else None, batch.column(deleted) if deleted else None,
                            lambda col, value: pc.equal(pc.utf8_lower(col), value))
            keys = batch.column(key) if keep is None else batch.column(key).filter(keep)
            yield from _sliced(_urls(prefix, _unquote_keys(keys, location)), chunk_rows)

    return _guarded(chunks(), f, location, what)


def _inventory_parquet(fs, path: str, location: str, prefix: str, chunk_rows: int,
                       retries: int) -> Iterator[pa.Array]:
    what = "S3 Inventory data file"
    f, parquet = _open(fs, path, location, retries, pq.ParquetFile, what=what, missing=_where(location))
    names = parquet.schema_arrow.names
    key, latest, deleted = _column(names, "key"), _column(names, "is_latest"), _column(names, "is_delete_marker")
    if key is None:
        f.close()
        raise UserError(f"{what} '{location}' has no key column (columns: {names})")

    def flag(col, value):  # Parquet inventories hold booleans; accept "true"/"false" text too
        if pa.types.is_boolean(col.type):
            return col if value == "true" else pc.invert(col)
        return pc.equal(pc.utf8_lower(col.cast(pa.string())), value)

    def chunks():
        for batch in parquet.iter_batches(columns=[c for c in (key, latest, deleted) if c], batch_size=chunk_rows):
            keep = _current(batch.column(latest) if latest else None, batch.column(deleted) if deleted else None,
                            flag)
            keys = _as_text(batch.column(key), location, key, what)
            yield from _sliced(_urls(prefix, keys if keep is None else keys.filter(keep)), chunk_rows)

    return _guarded(chunks(), f, location, what)


def _current(latest, deleted, is_value) -> pa.Array | None:
    """Mask of rows that are the latest version and not a delete marker (a null flag counts as latest and
    not deleted: reports of current versions only leave them empty); None when there is nothing to filter."""
    keep = None
    if latest is not None:
        keep = pc.fill_null(pc.invert(is_value(latest, "false")), True)
    if deleted is not None:
        not_deleted = pc.fill_null(pc.invert(is_value(deleted, "true")), True)
        keep = not_deleted if keep is None else pc.and_(keep, not_deleted)
    return keep


def _unquote_keys(keys: pa.Array, location: str) -> pa.Array:
    """CSV inventory keys decoded from S3's form-style URL encoding; only keys with '%' or '+' touch Python."""
    encoded = pc.fill_null(pc.match_substring_regex(keys, r"[%+]"), False)
    if not pc.any(encoded).as_py():
        return keys
    try:
        decoded = [unquote_plus(k, encoding="utf-8", errors="strict") for k in keys.filter(encoded).to_pylist()]
    except UnicodeDecodeError as err:
        raise UserError(f"S3 Inventory data file '{location}' has a key whose URL encoding is not UTF-8") from err
    return pc.replace_with_mask(keys, encoded, pa.array(decoded, keys.type))


def _urls(prefix: str, keys: pa.Array) -> pa.Array:
    """``prefix + key`` for each key that names an object (not null, not empty, not a folder marker)."""
    keys = _nonempty(keys)
    if len(keys):
        keys = keys.filter(pc.invert(pc.ends_with(keys, "/")))
    return pc.binary_join_element_wise(pa.scalar(prefix, keys.type), keys, pa.scalar("", keys.type))
