import json
import os
import stat

import pytest

from dfq.io import atomic_write, write_json_atomic


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"step": 1})

    def failing(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


def test_truncate_log_keeps_rows_up_to_the_step_and_widens_an_older_header(tmp_path):
    from dfq.io import truncate_log

    log = tmp_path / "losses.csv"
    log.write_text("step,loss\n10,0.5\n20,0.4\n30,0.3\n")
    assert truncate_log(log, 20) == ["step", "loss"]
    assert log.read_text().splitlines() == ["step,loss", "10,0.5", "20,0.4"]
    assert truncate_log(log, 20, ["step", "loss", "info"]) == ["step", "loss"]
    assert log.read_text().splitlines() == ["step,loss,info", "10,0.5,", "20,0.4,"]
    with pytest.raises(ValueError, match=r"columns \['info'\] that this run does not log"):
        truncate_log(log, 20, ["step", "loss"])
