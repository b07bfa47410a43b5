"""Stored files are found in a checkout, or fetched once into the cache when a notebook stands alone."""
import pytest

from ctxlab import book_files


def test_a_checkout_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the book folder: the package's checkout is found instead
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    folder = book_files.book_folder("data/casestudy", ["results.json", "base.pt"])
    assert folder == book_files.CHECKOUT_BOOK / "data" / "casestudy"
    assert not (tmp_path / "cache").exists()


def test_a_lone_notebook_fetches_once(tmp_path, monkeypatch):
    remote = tmp_path / "remote" / "data" / "x"
    remote.mkdir(parents=True)
    (remote / "a.json").write_text('{"n": 1}')
    (remote / "b.pt").write_bytes(b"\x00\x01" * 1000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(book_files, "CHECKOUT_BOOK", tmp_path / "no-checkout")
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    url = (tmp_path / "remote").as_uri()
    folder = book_files.book_folder("data/x", ["a.json", "b.pt"], base_url=url)
    assert folder == tmp_path / "cache" / "data" / "x"
    assert (folder / "b.pt").read_bytes() == (remote / "b.pt").read_bytes()
    assert not list(folder.glob("*.tmp"))
    (remote / "a.json").unlink()  # already cached: not fetched again
    assert book_files.book_folder("data/x", ["a.json"], base_url=url) == folder
    with pytest.raises(FileNotFoundError, match="fetching"):
        book_files.book_folder("data/x", ["missing.json"], base_url=url)
    assert not list(folder.glob("*.tmp"))
    with pytest.raises(ValueError, match="files must be"):
        book_files.book_folder("data/x", ["../../etc/passwd"])
