"""The report's data table names unreadable source lines: the total and the worst file."""

from pipelines.report import _unreadable


def test_unreadable_lines_show_the_worst_file_and_its_first_bad_line():
    curation = {"corrupt_lines": 4, "bad_lines_by_file": [
        {"file": "/data/web/00.jsonl", "lines": 84, "bad_lines": 3, "first_bad_line": 82},
        {"file": "/data/web/01.jsonl", "lines": 90, "bad_lines": 1, "first_bad_line": 7}]}
    assert _unreadable(curation) == "4: 00.jsonl 3/84, first at line 82 (+1 more files)"
    assert _unreadable({"corrupt_lines": 0, "bad_lines_by_file": []}) == "0"
    assert _unreadable({}) == "0"  # a curation.json written before per-file counts
