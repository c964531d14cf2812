"""The results page (sddlib.report_page): one self-contained HTML file whose tables are `sddlib.report`'s."""
import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from PIL import Image

from sddlib import report
from sddlib.report_page import THUMBNAIL_WIDTH, main, write_report
from tests.test_departures import PUBLISHED_TEACHER, _metrics, _write, config

matplotlib.use("Agg")


class Page(HTMLParser):
    """The tables of a page (by id: rows of cell texts, and the links of each cell), its images and links."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell_links, self.images, self.hrefs, self.headings = {}, {}, [], [], []
        self._table = self._row = self._cell = self._heading = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs["id"]
            self.tables[self._table], self.cell_links[self._table] = [], []
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table].append(self._row)
            self.cell_links[self._table].append([])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._row.append(self._cell)
            self.cell_links[self._table][-1].append([])
        elif tag == "a":
            self.hrefs.append(attrs["href"])
            if self._cell is not None:
                self.cell_links[self._table][-1][-1].append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("h2", "h3", "h4"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._row is not None:
            self._row[-1] = "".join(self._cell)
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag in ("h2", "h3", "h4"):
            self.headings.append((tag, "".join(self._heading)))
            self._heading = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def outputs(tmp_path):
    """Two seeds of SD-KD and KD as published, one smoke test, and figures for one run."""
    for seed, sd, plain in ((0, 76.0, 74.9), (1, 76.4, 75.3)):
        _write(tmp_path, f"sd-seed{seed}", _metrics(config(seed=seed), PUBLISHED_TEACHER, sd))
        _write(tmp_path, f"kd-seed{seed}", _metrics(config(seed=seed, M="[1]"), PUBLISHED_TEACHER, plain))
    smoke = config(epochs=1, subset=256)
    _write(tmp_path, "smoke", _metrics(smoke, {"source": "trained here", "protocol": smoke.teacher_protocol}, 1.17))
    figures = tmp_path / "cifar100" / "sd-seed0" / "figures"
    figures.mkdir()
    Image.new("RGB", (1200, 600), "orange").save(figures / "fig1_region_map.png")
    return tmp_path


def test_the_page_holds_the_report_tables_and_links_every_run(outputs):
    page_path = write_report(outputs)
    assert page_path == outputs / "report.html" and not list(outputs.glob("*.partial"))
    page = Page()
    page.feed(page_path.read_text())
    runs = report.load_runs(outputs)

    shown = page.tables["cifar100-results"]
    expected = report.format_table(report.results_table(runs, "cifar100"))
    assert shown[0] == [*expected.columns, "Runs"]
    assert [row[:-1] for row in shown[1:]] == expected.astype(str).values.tolist()
    # each row's runs are linked, and the links lead to the run folders
    links = {tuple(row[:3]): cell[-1] for row, cell in zip(shown[1:], page.cell_links["cifar100-results"][1:])}
    assert sorted(Path(h).name for h in links["resnet32x4", "ShuffleV1", "SD-KD"]) == ["sd-seed0", "sd-seed1"]
    assert sorted(Path(h).name for h in links["resnet32x4", "ShuffleV1", "KD"]) == ["kd-seed0", "kd-seed1"]
    assert sum(map(len, links.values())) == 4 + 4      # and the teacher row: the pair's four runs
    assert all((outputs / h).exists() for h in page.hrefs if not h.startswith("#"))

    gains = report.format_gains(report.sd_gains(runs, "cifar100")).astype(str).values.tolist()
    assert page.tables["cifar100-gains"][1:] == gains and gains[0][7] == "+1.10 ± 0.00"
    departures = page.tables["cifar100-departures"]
    assert [row[:-1] for row in departures[1:]] == \
        report.format_departures(report.departures_table(runs, "cifar100")).astype(str).values.tolist()
    assert departures[1][-1] == runs.set_index("path").loc[str(outputs / "cifar100/smoke/metrics.json"), "run_name"]
    # ImageNet and CUB-200, without runs of ours: one line each after CIFAR-100, linking to the paper's numbers
    assert not {"imagenet-results", "cub200-results"} & set(page.tables)
    text = page_path.read_text()
    assert text.index('id="cifar100"') < text.index('<p id="imagenet">ImageNet: no runs of ours yet')
    assert text.count("paper_results.csv</a>") == 2

    # self-contained: the one thumbnail is embedded, shrunk, and links to the full figure
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    thumb = Image.open(io.BytesIO(base64.b64decode(page.images[0].split(",", 1)[1])))
    assert thumb.size == (THUMBNAIL_WIDTH, THUMBNAIL_WIDTH // 2)
    assert "cifar100/sd-seed0/figures/fig1_region_map.png" in page.hrefs
    assert not [h for h in page.hrefs + page.images if h.startswith(("http:", "https:", "//"))]


def test_the_command_line_refuses_a_folder_that_is_not_there(tmp_path, capsys):
    assert main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().out.startswith(f"error: outputs_dir='{tmp_path / 'nothing'}' is not a folder;")
    assert main([str(tmp_path), "-o", str(tmp_path / "page.html")]) == 0 and (tmp_path / "page.html").is_file()


def test_the_notebook_tables_and_the_page_show_the_same_paired_gains_and_name_every_run(tmp_path):
    """A paper dataset (CIFAR-100, as published) and an image folder ("digits": no paper numbers), three seeds of
    KD and SD-KD each: the paired gains of the notebooks' tables (`report.write_tables`, what the dataset notebooks
    and results.ipynb write and show) are the page's; the folder's section leads with them; every run's heading
    names its method."""
    from tests.test_report import metrics, write
    for seed, (plain, sd) in enumerate([(74.0, 75.0), (74.5, 75.1), (74.2, 74.1)]):
        for dataset, departures in (("cifar100", {}), ("digits", {"experiment": ["your data", None]})):
            write(tmp_path, metrics(dataset, method="kd", scales=[1], seed=seed, best=plain, departures=departures))
            write(tmp_path, metrics(dataset, method="kd", seed=seed, best=sd, departures=departures))
    for scales, best in (([1], 70.0), ([1, 2, 4], 71.5)):   # a method the paper does not report, on its dataset
        write(tmp_path, metrics(method="ttm", scales=scales, best=best, departures={"experiment": ["ttm", None]}))
    for variant in ("alone", "teacher"):
        run = metrics("digits", student="resnet14", departures={"experiment": ["your data", None]})
        write(tmp_path, {**run, "variant": variant, "teacher": None, "method": None, "scales": None, "sd": False,
                         "teacher_top1": None, "run_name": f"resnet14-{variant}-seed0"})
    tables = report.write_tables(tmp_path)
    page = Page()
    page.feed(write_report(tmp_path).read_text())
    for dataset, key in (("cifar100", "gains"), ("digits", "ours")):
        shown = page.tables[f"{dataset}-{key}"]
        assert len(shown) == 2 and shown[1][2:5] == ["SD-KD − KD", "[1,2,4]", "3 of 3"] and shown[1][-2] == "2 of 3 seeds"
        markdown = (tmp_path / "tables" / f"{dataset}.md").read_text()
        assert report.to_markdown(pd.DataFrame(shown[1:], columns=shown[0])) in markdown   # the same rows
    assert tmp_path / "tables" / "digits-ours.csv" in tables
    ours = page.tables["cifar100-ours"]                          # our rows beside (not inside) the paper's
    assert [row[2:5] + row[7:8] for row in ours[1:]] == [["SD-TTM − TTM", "[1,2,4]", "1 of 1", "+1.50"]]
    assert "SD-TTM − TTM" not in str(page.tables["cifar100-gains"])
    digits = [text for tag, text in page.headings if tag != "h4" and text.startswith("digits")]
    assert digits[0] == "digits: our runs (no paper numbers), SD gain paired by seed"    # the page leads with them
    assert not [t for t in page.tables if t.startswith("digits-") and t not in ("digits-ours", "digits-results")]
    runs = {text.split(":")[0]: text.split(": ", 1)[1] for tag, text in page.headings if tag == "h4"}
    assert runs["resnet32x4-ShuffleV1-kd-M1-seed0"] == "KD M=[1], seed 0"
    assert runs["resnet32x4-ShuffleV1-sd_kd-M124-seed2"] == "SD-KD M=[1,2,4], seed 2"
    assert runs["resnet14-teacher-seed0"] == "Teacher, seed 0"
    assert runs["resnet14-alone-seed0"] == "Trained alone, seed 0"
