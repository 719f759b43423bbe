"""A file named by two inputs (a path and a glob, a folder and a file inside it, a symlink) is read once, with a
warning naming both: tokenizing it twice would silently double its share of the data (issue 16)."""
from __future__ import annotations

import os

from data_prep.sources import expand_inputs


def test_a_file_named_twice_is_read_once_with_a_warning(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "b.txt").write_text("two\n")
    os.symlink(tmp_path / "a.txt", tmp_path / "link.txt")   # the same file under another name
    specs = [str(tmp_path / "a.txt"), str(tmp_path / "*.txt"), str(tmp_path / "b.txt")]
    sources = expand_inputs(specs)
    assert [os.path.basename(s.path) for s in sources] == ["a.txt", "b.txt"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 3 and "read once" in err and repr(str(tmp_path / "*.txt")) in err, err


def test_distinct_files_are_all_kept(tmp_path, capsys):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name + "\n")
    assert len(expand_inputs([str(tmp_path)])) == 2 and capsys.readouterr().err == ""
