import os

import pytest

from risbench.errors import RisbenchError, check_can_create


def test_a_path_that_can_be_made_passes(tmp_path):
    check_can_create(tmp_path / "new" / "deeper" / "out.txt", "out")
    assert list(tmp_path.iterdir()) == []  # checking makes nothing


def test_a_file_where_a_folder_must_be_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep\n")
    for path in (blocker / "out.txt", blocker / "x" / "out.txt"):
        with pytest.raises(RisbenchError, match=f"out={path} cannot be written: {blocker} is a file, not a folder"):
            check_can_create(path, "out")
    check_can_create(blocker, "out")  # a file to be written: whether it may exist is the caller's rule
    with pytest.raises(RisbenchError, match=f"run={blocker} cannot be written: {blocker} is a file, not a folder"):
        check_can_create(blocker, "run", is_folder=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(RisbenchError, match=f"no permission to write in {locked}"):
        check_can_create(locked / "run", "hydra.run.dir")
