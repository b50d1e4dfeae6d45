"""Chunked Arrow reading of list files and S3 Inventory reports (``pipeline.listing_tables``): real files of
every format in tmp_path, a million-line list read in bounded chunks, and an inventory on loopback S3."""

from __future__ import annotations

import gzip
import json
import time

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import BUCKET
from pipeline import storage
from pipeline.errors import UserError
from pipeline.listing_tables import TABLE_SUFFIXES, is_table, iter_table_entries

LOCAL = fsspec.filesystem("file")

# A name with every character a naive reader trips over: spaces, commas, quotes, '#' inside, unicode.
AWKWARD = ['plain.jpg', 'with space.jpg', 'a,b,c.jpg', 'say "cheese".jpg', "it's.png", 'mid#hash.jpg',
           'été/naïve – 写真.png', r'C:\photos\win.jpg', 's3://bucket/key with spaces/x+y.jpg']


def read(path, location=None, **kwargs) -> list[str]:
    return [e for chunk in iter_table_entries(LOCAL, str(path), str(location or path), **kwargs)
            for e in chunk.to_pylist()]


def chunks_of(path, **kwargs) -> list[pa.Array]:
    return list(iter_table_entries(LOCAL, str(path), str(path), **kwargs))


def test_is_table_by_suffix_and_manifest_name():
    for name in ["a.txt", "b.LST", "c.csv", "d.Parquet", "e.csv.gz", "f.TXT.GZ", "g.lst.gz",
                 "s3://bkt/inv/2024-01-01T00-00Z/manifest.json", "/x/MANIFEST.JSON"]:
        assert is_table(name), name
    for name in ["a.jpg", "folder/", "a.gz", "a.json", "notmanifest.json", "a.txt.bak", "a.parquet.tmp"]:
        assert not is_table(name), name
    assert {".txt", ".lst", ".csv", ".parquet", ".csv.gz", ".txt.gz"} <= set(TABLE_SUFFIXES)


def test_text_list_keeps_awkward_names_and_drops_comments_blanks_and_whitespace(tmp_path):
    lines = ["\ufeff# a comment first, after a byte-order mark", "", *[f"  {n}\t" for n in AWKWARD[:4]],
             "   # an indented comment", "   ", "\t", *AWKWARD[4:], "#last comment"]
    path = tmp_path / "list.txt"
    path.write_bytes("\r\n".join(lines).encode())  # Windows line ends, no newline at the end
    assert read(path) == AWKWARD

    chunks = chunks_of(path, chunk_rows=2)
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    assert all(pa.types.is_string(c.type) or pa.types.is_large_string(c.type) for c in chunks)


def test_lst_and_gzipped_text_lists(tmp_path):
    (tmp_path / "list.lst").write_text("\n".join(AWKWARD) + "\n")
    with gzip.open(tmp_path / "list.txt.gz", "wt", encoding="utf-8") as f:
        f.write("# gz\n" + "\n".join(AWKWARD) + "\n\n")
    assert read(tmp_path / "list.lst") == AWKWARD
    assert read(tmp_path / "list.txt.gz") == AWKWARD


def test_empty_text_list_yields_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# nothing\n\n   \n")
    assert chunks_of(tmp_path / "empty.txt") == []
    assert chunks_of(tmp_path / "comments.txt") == []


def test_csv_list_reads_only_its_path_column_with_quoted_commas(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('id,path,label,notes\n'
                    '1,plain.jpg,cat,"a note, with a comma"\n'
                    '2,"a,b,c.jpg",dog,\n'
                    '3,"say ""cheese"".jpg",,x\n'
                    '4,,cat,empty path dropped\n'
                    '5,été/写真.png,cat,"multi\nline note"\n')
    assert read(path) == ["plain.jpg", "a,b,c.jpg", 'say "cheese".jpg', "été/写真.png"]
    assert read(path, path_column="label") == ["cat", "dog", "cat", "cat"]
    assert [len(c) for c in chunks_of(path, chunk_rows=3)] == [3, 1]

    gz = tmp_path / "list.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read(gz) == ["plain.jpg", "a,b,c.jpg", 'say "cheese".jpg', "été/写真.png"]


def test_csv_without_the_column_names_the_columns_it_has(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("id,file,label\n1,a.jpg,cat\n")
    with pytest.raises(UserError, match=r"has no 'path' column .*\['id', 'file', 'label'\]"):
        read(path)
    assert read(path, path_column="file") == ["a.jpg"]


def test_parquet_list_in_chunks_drops_nulls_and_empties(tmp_path):
    paths = [f"img_{i}.jpg" for i in range(10)] + [None, "", *AWKWARD]
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"id": list(range(len(paths))), "path": paths}), path, row_group_size=7)
    assert read(path) == [p for p in paths if p]
    assert max(len(c) for c in chunks_of(path, chunk_rows=4)) <= 4

    # other text encodings of the column: large_string, dictionary (categorical), UTF-8 binary
    for name, column in [("large", pa.array(AWKWARD, pa.large_string())),
                         ("dict", pa.array(AWKWARD).dictionary_encode()),
                         ("binary", pa.array([p.encode() for p in AWKWARD], pa.binary()))]:
        other = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"url": column}), other)
        assert read(other, path_column="url") == AWKWARD, name


def test_parquet_without_the_column_or_with_numbers_is_a_user_error(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"file": ["a.jpg"], "n": [1]}), path)
    with pytest.raises(UserError, match=r"no 'path' column .*\['file', 'n'\]"):
        read(path)
    with pytest.raises(UserError, match=r"column 'n' holds int64"):
        read(path, path_column="n")


def test_missing_damaged_and_undecodable_files_are_user_errors_naming_them(tmp_path):
    for name in ["missing.txt", "missing.csv", "missing.parquet", "missing.txt.gz", "manifest.json"]:
        with pytest.raises(UserError, match=rf"list file '.*{name}' does not exist"):
            read(tmp_path / name)

    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip data\n")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"path\n" + b"a.jpg\n" * 1000)[:-30])
    (tmp_path / "bad.csv").write_text('path,x\n"a.jpg,1\nb.jpg,2,3,4\n')
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9.jpg\n".encode("latin-1"))
    started = time.monotonic()
    for name in ["bad.parquet", "bad.txt.gz", "cut.csv.gz", "bad.csv", "latin1.txt"]:
        with pytest.raises(UserError, match=rf"'{tmp_path / name}'"):
            read(tmp_path / name)
    assert time.monotonic() - started < 2, "a damaged local file must not be retried"

    with pytest.raises(UserError, match="not a list file"):
        read(tmp_path / "x.json")


def test_a_million_line_list_is_read_in_bounded_chunks(tmp_path):
    path = tmp_path / "million.txt"
    with open(path, "w") as f:
        f.write("# a big list\n")
        for start in range(0, 1_000_000, 100_000):
            f.write("".join(f"s3://photo-archive/2024/05/cam-{i % 97:02d}/img_{i:09d}.jpg\n"
                            for i in range(start, start + 100_000)))
    size = path.stat().st_size
    count = largest = peak = 0
    first = last = None
    started = time.monotonic()
    for chunk in iter_table_entries(LOCAL, str(path), str(path), chunk_rows=50_000):
        count += len(chunk)
        largest = max(largest, len(chunk))
        peak = max(peak, pa.total_allocated_bytes())
        first = first or chunk[0].as_py()
        last = chunk[-1].as_py()
    elapsed = time.monotonic() - started
    assert count == 1_000_000
    assert largest <= 50_000
    assert first == "s3://photo-archive/2024/05/cam-00/img_000000000.jpg"
    assert last == "s3://photo-archive/2024/05/cam-26/img_000999999.jpg"
    assert peak < size / 4, f"{peak} bytes of Arrow memory held for a {size}-byte file"
    assert elapsed < 5, f"{elapsed:.1f} s for a million lines"


# -- S3 Inventory -------------------------------------------------------------------------------------

CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate"
# (key as S3 writes it in a CSV inventory: form-style URL encoding) -> the object's real key
ENCODED = [("photos/plain.jpg", "photos/plain.jpg"),
           ("photos/with+space.jpg", "photos/with space.jpg"),
           ("photos/c%2B%2B.jpg", "photos/c++.jpg"),
           ("photos/%C3%A9t%C3%A9/%E5%86%99%E7%9C%9F.png", "photos/été/写真.png"),
           ("photos/a%2Cb%25.jpg", "photos/a,b%.jpg")]


def inventory_csv(rows) -> bytes:
    """A gzipped, headerless CSV inventory data file, every field quoted as S3 writes them."""
    text = "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows)
    return gzip.compress(text.encode())


def csv_manifest(keys: list[str], destination: str = "arn:aws:s3:::inventory-dest") -> dict:
    return {"sourceBucket": "photo-source", "destinationBucket": destination, "version": "2016-11-30",
            "creationTimestamp": "1714521600000", "fileFormat": "CSV", "fileSchema": CSV_SCHEMA,
            "files": [{"key": k, "size": 100, "MD5checksum": "0" * 32} for k in keys]}


def write_local_csv_inventory(folder):
    prefix = "inv/photo-source/daily/data"
    rows_1 = [("photo-source", enc, "v1", "true", "false", "10", "2024-05-01T00:00:00.000Z") for enc, _ in ENCODED]
    rows_1 += [("photo-source", "photos/", "v1", "true", "false", "0", "2024-05-01T00:00:00.000Z"),  # folder marker
               ("photo-source", "photos/old.jpg", "v0", "false", "false", "9", "2024-04-01T00:00:00.000Z"),
               ("photo-source", "photos/gone.jpg", "v2", "true", "true", "", "2024-05-01T00:00:00.000Z")]
    rows_2 = [("photo-source", "more/second+file.jpg", "", "true", "false", "5", "2024-05-01T00:00:00.000Z")]
    (folder / "a1.csv.gz").write_bytes(inventory_csv(rows_1))
    (folder / "b2.csv.gz").write_bytes(inventory_csv(rows_2))
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(csv_manifest([f"{prefix}/a1.csv.gz", f"{prefix}/b2.csv.gz"])))
    return manifest


def test_local_csv_inventory_decodes_keys_and_keeps_only_current_objects(tmp_path):
    manifest = write_local_csv_inventory(tmp_path)
    expected = [f"s3://photo-source/{key}" for _, key in ENCODED] + ["s3://photo-source/more/second file.jpg"]
    assert read(manifest) == expected
    assert max(len(c) for c in chunks_of(manifest, chunk_rows=2)) <= 2


def test_local_inventory_with_a_missing_data_file_says_where_it_looked(tmp_path):
    manifest = write_local_csv_inventory(tmp_path)
    (tmp_path / "b2.csv.gz").unlink()
    with pytest.raises(UserError, match=r"data file '.*b2.csv.gz' does not exist.*next to manifest.json"):
        read(manifest)


def test_csv_inventory_with_only_bucket_and_key_columns(tmp_path):
    (tmp_path / "d.csv.gz").write_bytes(inventory_csv([("src", "x/a+b.jpg"), ("src", "x/dir/")]))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({**csv_manifest(["p/d.csv.gz"]), "sourceBucket": "src",
                                    "fileSchema": "Bucket, Key"}))
    assert read(manifest) == ["s3://src/x/a b.jpg"]


def test_parquet_inventory_keys_are_not_url_decoded(tmp_path):
    keys = ["photos/with space.jpg", "photos/c++.jpg", "photos/100%.jpg", "photos/été.png", "photos/", "old.jpg",
            "gone.jpg"]
    pq.write_table(pa.table({"bucket": ["photo-source"] * len(keys), "key": keys,
                             "is_latest": [True, True, True, None, True, False, True],
                             "is_delete_marker": [False, False, None, False, False, False, True],
                             "size": [1] * len(keys)}), tmp_path / "inv1.parquet")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "sourceBucket": "photo-source", "destinationBucket": "arn:aws:s3:::dest", "fileFormat": "Parquet",
        "fileSchema": "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
                      "optional boolean is_latest; optional boolean is_delete_marker; optional int64 size; }",
        "files": [{"key": "dest-prefix/photo-source/cfg/data/inv1.parquet", "size": 1, "MD5checksum": "x"}]}))
    assert read(manifest) == ["s3://photo-source/photos/with space.jpg", "s3://photo-source/photos/c++.jpg",
                              "s3://photo-source/photos/100%.jpg", "s3://photo-source/photos/été.png"]


def test_orc_and_malformed_manifests_are_user_errors(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({**csv_manifest(["a.orc"]), "fileFormat": "ORC"}))
    with pytest.raises(UserError, match="ORC .*not supported.*CSV or Parquet"):
        read(manifest)
    manifest.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read(manifest)
    manifest.write_text(json.dumps({"files": []}))
    with pytest.raises(UserError, match="sourceBucket, fileFormat"):
        read(manifest)
    manifest.write_text(json.dumps({**csv_manifest(["a.csv.gz"]), "fileSchema": "Bucket, Size"}))
    with pytest.raises(UserError, match="no Key column"):
        read(manifest)


@pytest.fixture()
def inventory_on_s3(s3_behind_proxy):
    """A CSV inventory as S3 writes it: manifest.json and a gzipped data file in the destination bucket."""
    direct, proxy, options = s3_behind_proxy
    data_key = "inventory/photo-source/daily/data/5f3c.csv.gz"
    rows = [("photo-source", enc, "", "true", "false", "10", "2024-05-01T00:00:00.000Z") for enc, _ in ENCODED]
    direct.pipe(f"{BUCKET}/{data_key}", inventory_csv(rows))
    manifest = f"{BUCKET}/inventory/photo-source/daily/2024-05-01T00-00Z/manifest.json"
    direct.pipe(manifest, json.dumps(csv_manifest([data_key], destination=f"arn:aws:s3:::{BUCKET}")).encode())
    storage.set_storage_options(options)
    yield f"s3://{manifest}", proxy
    proxy.heal()


@pytest.mark.parametrize("only", ["manifest.json", "/data/"])
def test_s3_inventory_is_read_from_the_destination_bucket_through_an_outage(inventory_on_s3, only):
    url, proxy = inventory_on_s3
    fs, path = storage.filesystem(url)
    refused = proxy.refused
    proxy.outage(2, only=only)  # the manifest's open, or the data file's, answers 503 SlowDown for 2 s
    entries = [e for chunk in iter_table_entries(fs, path, url, retries=8) for e in chunk.to_pylist()]
    assert entries == [f"s3://photo-source/{key}" for _, key in ENCODED]
    assert proxy.refused > refused, "the outage was not met: the test shows no retry"


def test_s3_list_file_missing_is_a_user_error(inventory_on_s3):
    url, _ = inventory_on_s3
    missing = f"s3://{BUCKET}/no/such/list.txt"
    fs, path = storage.filesystem(missing)
    with pytest.raises(UserError, match=f"list file '{missing}' does not exist"):
        list(iter_table_entries(fs, path, missing))
