"""The TSV reading shared by the dataset loaders.

The upstream files are UTF-8, tab-separated, with a header row, and quoted
the way Python's `csv` module writes them, so they are read with
`csv.reader(delimiter="\\t", strict=True)` and default quoting.
"""

import csv
import zlib


def read_records(f, name, header, *, noun, fields="columns", row_numbers=False, one_line=False):
    """Yields `(line, row)` for each record of a TSV text stream after its header.

    `f` is opened with `newline=""`. Each record is checked to have one field
    per column of `header`; checking the values is the caller's. Every
    problem raises a `ValueError` whose message starts with `"{name}: "`:
    a header other than `header`, a wrong number of fields (a truncated row),
    a `csv.Error` (malformed quoting), invalid UTF-8, a truncated or corrupted
    gzip stream, and, once all records are read, none.

    Args:
        f: the text stream.
        name: identifies the file in error messages.
        header: the expected header, a list of column names.
        noun: what the records are, for the "contains no {noun}" message.
        fields: what the message on a wrong number of fields calls them.
        row_numbers: also name the record's 0-based index, `(row i)`, after
            its line in the message on a wrong number of fields.
        one_line: reject a record that spans more than one physical line
            (otherwise a quoted text may, and `line` is its first line).

    Yields:
        `(line, row)`: the record's first physical line (1-based) and its
        list of fields.
    """
    reader = csv.reader(f, delimiter="\t", strict=True)
    count = 0
    try:
        got = next(reader, None)
        if got != header:
            got = "an empty file" if got is None else repr("\t".join(got))
            expected = "\t".join(header)
            raise ValueError(f"{name}: line 1: expected the header {expected!r}, got {got}.")
        end = reader.line_num
        for row in reader:
            # A quoted text may span lines: report the row's first line.
            line, end = end + 1, reader.line_num
            if one_line and end != line:
                # A stray quote would otherwise swallow the lines up to the
                # next quote into one text, silently.
                raise ValueError(
                    f"{name}: the record starting on line {line} spans lines {line}-{end}; "
                    'every record must be on one line (an unbalanced quote `"`?).'
                )
            if len(row) != len(header):
                where = f"line {line} (row {count})" if row_numbers else f"line {line}"
                raise ValueError(
                    f"{name}: {where}: expected {len(header)} tab-separated {fields} "
                    f"({', '.join(header)}), got {len(row)}."
                )
            yield line, row
            count += 1
    except csv.Error as e:
        raise ValueError(f"{name}: line {reader.line_num}: malformed TSV: {e}.") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not valid UTF-8 after line {reader.line_num}: {e}.") from e
    except (EOFError, OSError, zlib.error) as e:
        # gzip: a truncated (EOFError) or corrupted (BadGzipFile, zlib.error) file.
        raise ValueError(
            f"{name}: corrupted or truncated file, unreadable after line {reader.line_num} "
            f"({type(e).__name__}: {e}). Replace it: reinstall cfkeras for the packaged copy, "
            "or download it again."
        ) from e
    if not count:
        raise ValueError(f"{name}: contains no {noun}.")
