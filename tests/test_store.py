"""The append-only store survives a writer killed mid-line."""

from __future__ import annotations

from pathlib import Path

from qeval.store import RequestCache, read_jsonl


def test_torn_last_line_is_skipped_and_removed_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    cache = RequestCache(path)
    cache.append({"a": {"x": 1}, "b": {"x": 2}})
    with open(path, "a") as f:
        f.write('{"key": "c", "val')  # the process died here
    resumed = RequestCache(path)
    assert resumed.lookup(["a", "b", "c"]) == {"a": {"x": 1}, "b": {"x": 2}}
    resumed.append({"c": {"x": 3}})
    assert [r["key"] for r in read_jsonl(path)] == ["a", "b", "c"]
    assert RequestCache(path).lookup(["c"]) == {"c": {"x": 3}}


def test_garbage_line_in_the_middle_is_refused_with_the_file_and_line(tmp_path) -> None:
    import pytest
    from qeval.errors import QevalError
    from qeval.store import read_jsonl

    path = tmp_path / "s.jsonl"
    path.write_text('{"a": 1}\ngarbage{\n{"a": 2}\n')
    with pytest.raises(QevalError) as exc:
        read_jsonl(path)
    assert "line 2 is not JSON" in exc.value.render() and str(path) in exc.value.render()
    assert "--resume" in exc.value.render()
