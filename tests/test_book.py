"""The book's own machinery without a browser: the Sphinx extension, plot metadata, pages."""

from __future__ import annotations

import io
import json
import pkgutil
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

import ftcourse  # noqa: E402
from ftcourse import plots, sphinxext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_launch_buttons_need_a_repository_url():
    options = {
        "repository_url": "",
        "use_repository_button": True,
        "use_download_button": True,
        "launch_buttons": {"colab_url": "https://colab.research.google.com", "binderhub_url": "b"},
    }
    off = sphinxext.launch_options(options)
    assert off["launch_buttons"] == {} and off["use_repository_button"] is False
    assert off["use_download_button"] is True
    on = sphinxext.launch_options({**options, "repository_url": "https://github.com/o/r"})
    assert on["launch_buttons"]["colab_url"] and on["use_repository_button"] is True


def test_colab_cell_installs_the_release_from_the_configured_repository():
    from ftcourse import __version__

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        colab = [c for c in cells if "colab" in c["metadata"].get("tags", [])]
        assert len(colab) == 1, path.name
        source = "".join(colab[0]["source"])
        assert "google.colab" in source and f'git+{url}@v{__version__}"' in source, path.name
        assert "remove-cell" in colab[0]["metadata"]["tags"], path.name


def test_imported_modules_finds_the_helpers_a_chapter_uses():
    code = (
        "from ftcourse import chapter, lm\n"
        "from ftcourse.align import (\n    feedback,\n    ppo,\n)\n"
        "from ftcourse.methods.lora import LoRALinear\n"
        "from ftcourse.methods import lora as L\n"
    )
    assert sphinxext.imported_modules(code) == [
        "ftcourse.chapter",
        "ftcourse.lm",
        "ftcourse.align.feedback",
        "ftcourse.align.ppo",
        "ftcourse.methods.lora",
    ]


def test_api_reference_documents_every_module():
    text = (ROOT / "book" / "api.md").read_text()
    modules = [
        m.name
        for m in pkgutil.walk_packages(ftcourse.__path__, "ftcourse.")
        if not m.name.rsplit(".", 1)[-1].startswith("_") and ".zoo" not in m.name
    ]
    missing = [m for m in modules if f".. automodule:: {m}\n" not in text]
    assert not missing, f"add to book/api.md: {missing}"


def test_figure_png_carries_alt_text_and_smallest_font():
    plots.use_book_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    fig.suptitle("Accuracy against steps")
    left.set_title("train")
    right.set_xlabel("step")
    right.set_ylabel("loss")
    right.set_title("validation", fontsize=8)
    with Image.open(io.BytesIO(plots.figure_png(fig))) as png:
        info = dict(png.info)
    plt.close(fig)
    assert info[plots.ALT_KEY] == "Figure: Accuracy against steps. Panels: train; validation."
    # the 8 pt panel title is the smallest text: 8 pt at 100 dpi is 11.1 px
    assert abs(float(info[plots.MIN_FONT_KEY]) - 8 * 100 / 72) < 0.01


def test_alt_text_without_titles_uses_axis_labels():
    fig, ax = plt.subplots()
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    assert plots.alt_text(fig) == "Figure: accuracy against epoch."
    plt.close(fig)


def test_book_palette_is_the_colour_blind_safe_one():
    plots.use_book_style()
    cycle = [c["color"] for c in plt.rcParams["axes.prop_cycle"]]
    assert cycle[:3] == ["#0072B2", "#E69F00", "#009E73"]


def test_the_book_runs_its_kernels_over_ipc_without_the_tcp_warning(capfd, monkeypatch):
    import os

    import nbformat
    from jupyter_cache.executors import utils

    monkeypatch.setattr(utils, "executenb", utils.executenb)  # undone after the test
    assert sphinxext.kernels_over_ipc() and sphinxext.kernels_over_ipc()  # twice: wrapped once
    assert utils.executenb.ftcourse_ipc
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    result = utils.single_nb_execution(nb, cwd=None, timeout=60, allow_errors=False)
    assert result.err is None and nb.cells[0].outputs[0]["text"].strip() == "42"
    if os.name == "posix":
        assert "without encryption" not in capfd.readouterr().err
