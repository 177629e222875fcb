"""The pilot demo shows each round as the coordinator closes it (issue 21, item 5)."""

import json

from fedmol.pilot.demo import round_reporter


def test_rounds_are_shown_as_they_close_and_a_half_written_line_waits(tmp_path):
    progress, lines = tmp_path / "progress.jsonl", []
    show = round_reporter(progress, lines.append)
    show()  # no file yet: nothing
    rows = [dict(round=0, participants=2, failures=0, **{"test_rocauc@1.0": 0.61234, "valid_rocauc@1.0": None}),
            dict(round=1, participants=1, failures=1, skipped_reason="1 usable reply", **{"test_rocauc@1.0": 0.6})]
    progress.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:20])
    show()
    assert lines == ["round 0: 2 partner(s), 0 failure(s), test rocauc@1.0 0.6123"]
    progress.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    show()
    show()  # nothing new: nothing repeated
    assert lines[1:] == ["round 1: 1 partner(s), 1 failure(s), SKIPPED (1 usable reply), test rocauc@1.0 0.6000"]
