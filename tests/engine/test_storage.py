"""The local file storage keeps every key below its folder."""

from __future__ import annotations

import pytest

from pixelmill.files.storage import LocalStorage


@pytest.mark.parametrize("key", ["../outside.png", "a/../../outside.png", "/etc/passwd", "a/\x00.png", "", "."])
def test_a_key_that_leaves_the_folder_is_refused(tmp_path, key):
    storage = LocalStorage(tmp_path / "files")
    with pytest.raises(ValueError):
        storage.put(key, b"x")
    with pytest.raises(ValueError):
        storage.exists(key)
    assert not (tmp_path / "outside.png").exists()


def test_keys_are_files_below_the_folder_and_a_linked_folder_is_followed(tmp_path):
    storage = LocalStorage(tmp_path / "files")
    storage.put("ab/cd.png", b"one")
    storage.put("a/./b/../e.png", b"two")  # read by name: a/e.png
    assert storage.get("ab/cd.png") == b"one" and storage.get("a/e.png") == b"two"
    assert storage.exists("ab/cd.png") and not storage.exists("ab/none.png")
    other = tmp_path / "other-disk"
    other.mkdir()
    (tmp_path / "files" / "big").symlink_to(other, target_is_directory=True)  # an operator's link to another disk
    storage.put("big/x.png", b"three")
    assert (other / "x.png").read_bytes() == b"three"
    storage.delete("ab/cd.png")
    assert not storage.exists("ab/cd.png")
