"""DATA (and --val) as a labels table: images listed with their labels, not sorted into class folders.

A table is a CSV or Parquet file, or a folder or glob of them, local or any fsspec URL, with a path column
and a label column (``--path-column``, ``--label-column``; ``path`` and ``label`` by default): how most
data sets, annotation tools and a reviewed ``pipeline label`` OUTPUT keep labels. A ``pipeline label``
OUTPUT is read as one: its error rows are left out, and ``--min-score S`` keeps only the rows its model
scored at least S (a big model's confident labels can train a small one). Relative paths resolve against
the table's own folder. Nothing is dropped silently: rows without a label, below ``--min-score``, failed in
labeling, or naming an image again are counted and reported.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.errors import UserError
from pipeline.plural import plural

SUFFIXES = (".csv", ".csv.gz", ".parquet")


def is_table_file(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


@dataclass
class LabelsTable:
    """What a labels table holds, as the fine-tuning split needs it."""

    classes: dict[str, list[str]]  # label -> image paths/URLs, sorted
    rows: int = 0  # rows read
    no_label: int = 0  # rows with an empty or missing label
    low_score: int = 0  # rows scored under --min-score
    failed: int = 0  # rows of a labeling OUTPUT that hold an error
    repeats: int = 0  # rows naming an image an earlier row named (the first row's label is kept)
    files: list[str] = field(default_factory=list)  # the table files read

    def notes(self, what: str, location: str) -> list[str]:
        """Lines for the console: what was read and every kind of row left out."""
        left = [(self.no_label, "without a label"), (self.low_score, "scored under --min-score"),
                (self.failed, "that failed in labeling"), (self.repeats, "naming an image again")]
        dropped = "; ".join(f"{plural(count, 'row')} {why}" for count, why in left if count)
        return [f"{what} '{location}': {plural(self.rows, 'row')} in {plural(len(self.files), 'table file')}"
                + (f", left out: {dropped}" if dropped else "")]


def table_files(location: str, what: str = "DATA") -> list[str] | None:
    """The table files ``location`` names, or None when it is a class-per-folder tree (or does not exist)."""
    from pipeline.results import part_files

    fs, root = storage.filesystem(location)
    if any(ch in root for ch in "*?["):
        found = sorted(p for p in fs.glob(root) if is_table_file(p))
        if not found:
            raise UserError(f"{what} '{location}' matches no .csv or .parquet table")
        return [storage.full_url(fs, p, location) for p in found]
    if not fs.exists(root):
        return None
    if not fs.isdir(root):
        if not is_table_file(root):
            raise UserError(f"{what} '{location}' is a file but not a labels table (.csv, .csv.gz or .parquet); "
                            "pass a table, or a folder with one subfolder of images per class")
        return [location]
    parts = part_files(location)  # a 'pipeline label' OUTPUT
    if parts:
        return parts
    entries = fs.ls(root, detail=True)
    folders = [e for e in entries if e["type"] == "directory"
               and not posixpath.basename(e["name"].rstrip("/")).startswith((".", "_"))]
    tables = sorted(e["name"] for e in entries if e["type"] != "directory" and is_table_file(e["name"]))
    if tables and not folders:
        return [storage.full_url(fs, p, location) for p in tables]
    return None


def read_labels_table(files: list[str], location: str, path_column: str = "path", label_column: str = "label",
                      min_score: float | None = None, what: str = "DATA") -> LabelsTable:
    """Every (path, label) of ``files``; UserError naming a missing column or an unreadable file."""
    table = LabelsTable({}, files=list(files))
    seen: set[str] = set()
    for location_of_file in files:
        data = _read(location_of_file, path_column, label_column, min_score, what)
        table.rows += data.num_rows
        keep = pc.invert(pc.is_null(data[path_column]))
        if "error" in data.column_names:  # a labeling OUTPUT: its failed rows hold no label
            failed = pc.invert(pc.is_null(data["error"]))
            table.failed += pc.sum(pc.and_(keep, failed)).as_py() or 0
            keep = pc.and_(keep, pc.invert(failed))
        labels = pc.utf8_trim_whitespace(pc.cast(data[label_column], pa.string()))
        labeled = pc.and_(pc.invert(pc.is_null(labels)), pc.not_equal(labels, ""))
        table.no_label += pc.sum(pc.and_(keep, pc.invert(pc.fill_null(labeled, False)))).as_py() or 0
        keep = pc.and_(keep, pc.fill_null(labeled, False))
        if min_score is not None:
            scored = pc.fill_null(pc.greater_equal(pc.cast(data["score"], pa.float64()), min_score), False)
            table.low_score += pc.sum(pc.and_(keep, pc.invert(scored))).as_py() or 0
            keep = pc.and_(keep, scored)
        folder = posixpath.dirname(location_of_file.rstrip("/"))
        for path, label in zip(pc.filter(data[path_column], keep).to_pylist(), pc.filter(labels, keep).to_pylist()):
            path = _resolved(str(path), folder)
            if path in seen:
                table.repeats += 1
                continue
            seen.add(path)
            table.classes.setdefault(label, []).append(path)
    for paths in table.classes.values():
        paths.sort()
    table.classes = dict(sorted(table.classes.items()))
    return table


def _resolved(path: str, folder: str) -> str:
    """An absolute path or URL as it is; a relative one against the table's folder."""
    if storage.is_url(path) or path.startswith("/"):
        return path
    return storage.join(folder, path) if storage.is_url(folder) else posixpath.normpath(posixpath.join(folder, path))


def _read(location: str, path_column: str, label_column: str, min_score: float | None, what: str) -> pa.Table:
    import pyarrow.csv as pv
    from pipeline.parquet_files import read_parquet

    fs, path = storage.filesystem(location)
    try:
        with fs.open(path, "rb", compression="infer") as f:
            if path.lower().endswith(".parquet"):
                def wanted(names: list[str]) -> list[str]:
                    _check_columns(names, location, path_column, label_column, min_score, what)
                    return list(dict.fromkeys(c for c in (path_column, label_column, "score", "error") if c in names))

                return read_parquet(f, columns=wanted)
            data = pv.read_csv(f, convert_options=pv.ConvertOptions(strings_can_be_null=True))
    except UserError:
        raise
    except (pa.ArrowException, OSError, ValueError) as err:
        raise UserError(f"{what} table '{location}' cannot be read ({type(err).__name__}: {err}); "
                        "it should be a CSV file with a header row or a Parquet file") from err
    _check_columns(data.column_names, location, path_column, label_column, min_score, what)
    return data


def _check_columns(names: list[str], location: str, path_column: str, label_column: str,
                   min_score: float | None, what: str) -> None:
    for column, option in ((path_column, "--path-column"), (label_column, "--label-column")):
        if column not in names:
            raise UserError(f"{what} table '{location}' has no '{column}' column (it has: {', '.join(names)}); "
                            f"name the right one with {option}")
    if min_score is not None and "score" not in names:
        raise UserError(f"--min-score needs a 'score' column, and {what} table '{location}' has none "
                        f"(it has: {', '.join(names)}); it is for the OUTPUT of 'pipeline label'")
