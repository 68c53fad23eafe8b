"""The output-directory rules: nothing half-written, nothing lost, nothing left behind."""

import pytest

from gznq.outdir import ResultKind, check_output, partial_dir, writing_output

KIND = ResultKind("thing", marker="thing.json", entries=("thing.json", "thing.bin", "state.pt"), resume_file="state.pt")


def _finished(out):
    with writing_output(out, KIND) as work:
        (work / "thing.json").write_text("{}")
        (work / "thing.bin").write_text("1")


def test_a_finished_run_replaces_only_its_own_kind(tmp_path):
    out = tmp_path / "out"
    _finished(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError, match="already holds a thing; pass --overwrite"):
        check_output(out, KIND, overwrite=False)
    check_output(out, KIND, overwrite=True)
    (out / "notes.txt").write_text("mine")  # now it holds something else too: never replaced
    with pytest.raises(FileExistsError, match="holds files that are not a thing; it is left untouched"):
        check_output(out, KIND, overwrite=True)


def test_an_error_leaves_the_old_result_and_no_partial_unless_a_resume_can_use_it(tmp_path):
    out = tmp_path / "out"
    _finished(out)
    with pytest.raises(RuntimeError):
        with writing_output(out, KIND) as work:
            (work / "thing.json").write_text("half")
            raise RuntimeError("boom")
    assert (out / "thing.bin").read_text() == "1" and not partial_dir(out).exists()
    with pytest.raises(KeyboardInterrupt):
        with writing_output(out, KIND) as work:
            (work / "state.pt").write_text("step 10")
            raise KeyboardInterrupt
    assert (partial_dir(out) / "state.pt").exists() and (out / "thing.bin").read_text() == "1"
    with pytest.raises(FileExistsError):
        check_output(out, KIND, overwrite=False)
    check_output(out, KIND, overwrite=False, resume=True)
    fresh = tmp_path / "fresh"
    partial_dir(fresh).mkdir()
    with pytest.raises(FileExistsError, match="holds an interrupted run; pass --resume to continue it or --overwrite"):
        check_output(fresh, KIND, overwrite=False)
    with writing_output(out, KIND, resume=True) as work:
        assert (work / "state.pt").read_text() == "step 10"
        (work / "thing.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["state.pt", "thing.json"] and not partial_dir(out).exists()


def test_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="which is a file"):
        check_output(tmp_path / "afile" / "sub", KIND, overwrite=False)
    with pytest.raises(ValueError, match="is a file; give --out a directory"):
        check_output(tmp_path / "afile", KIND, overwrite=False)
    (tmp_path / "o.partial").write_text("x")
    with pytest.raises(ValueError, match="o.partial' is a file"):
        check_output(tmp_path / "o", KIND, overwrite=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        check_output(tmp_path / "new", KIND, overwrite=False, resume=True)
    plain = ResultKind("plain", marker="p.json", entries=("p.json",))
    (tmp_path / "q.partial").mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite to start again"):  # no --resume to offer
        check_output(tmp_path / "q", plain, overwrite=False)
