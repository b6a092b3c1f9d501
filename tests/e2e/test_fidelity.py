"""The differential fidelity suite: real notebooks run locally and through %%remote must leave
their kernels in the same state; plus the harness's own checks (its fingerprints, its
classification, and a kernel whose cells run unchanged comparing equal to the local one)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from fidelity import fingerprint
from fidelity.cells import Cell, ipython_only
from fidelity.compare import CellReport, Difference, NotebookReport, compare_cell
from fidelity.corpus import CORPUS, SSH_SUBSET_CELLS, corpus_notebooks, ssh_subset
from fidelity.kernels import Observation
from fidelity.known import list_unaccepted, load_known, mark_accepted, unaccepted
from fidelity.locate import locate_bytes
from fidelity.reads import Reads
from fidelity.report import render
from fidelity.run import run_many, run_notebook
from fidelity.text import shorten
from helpers import TESTS

pytestmark = pytest.mark.fidelity
ARTIFACTS = TESTS / "artifacts"
CELL_TIMEOUT = 180  # seconds a cell may take in any kernel before its notebook is abandoned


# -- the corpus -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> tuple[list[NotebookReport], float]:
    """One run of the whole corpus through %%remote on localhost (R), the SSH subset through
    %%remote -q hpc (S) too: a notebook of the subset runs in L, C, R and S at once, sharing
    L and C (the slowest part of the suite, so it is run once for both tests)."""
    paths = corpus_notebooks()
    if not paths:
        pytest.skip(f"no notebooks in {CORPUS}")
    subset = set(ssh_subset(paths))
    started = time.monotonic()
    reports = run_many(paths, lambda p: ("R", "S", "O") if p in subset else ("R",),
                       timeout=CELL_TIMEOUT)
    mark_accepted(reports, load_known())
    return reports, time.monotonic() - started


def report_and_check(run: tuple[list[NotebookReport], float], target: str,
                     report: str) -> None:
    """Write the whole report to tests/artifacts (whatever pytest's capture), print the
    figures, fail listing every deterministic difference known_differences.yaml lacks."""
    reports, seconds = run
    reports = [r for r in reports if target in r.targets]
    text = render(reports, seconds, only=[target])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / report).write_text(text)
    print("\n" + "\n".join(line for line in text.splitlines() if line.startswith(
        ("TOTAL", "run time"))) + f"\nreport: tests/artifacts/{report}")
    aborted = [f"{r.name}: {r.aborted}" for r in reports if r.aborted]
    assert not aborted, "notebooks that could not be run to the end:\n" + "\n".join(aborted)
    missing = unaccepted(reports, only=[target])
    if missing:
        pytest.fail(list_unaccepted(missing, f"tests/artifacts/{report}"),
                    pytrace=False)


@pytest.mark.timeout(1500)
def test_the_corpus_runs_the_same_through_remote_on_localhost(corpus: Any) -> None:
    report_and_check(corpus, "R", "fidelity-report.txt")


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("target, report", [("S", "fidelity-report-ssh.txt"),
                                            ("O", "fidelity-report-openssh.txt")])
def test_a_corpus_subset_runs_the_same_through_remote_over_ssh(corpus: Any, target: str,
                                                               report: str) -> None:
    """Over each transport: S through paramiko, O through the system's OpenSSH."""
    reports, _ = corpus
    assert sum(r.counts(target)["counted"] for r in reports if target in r.targets) >= \
        SSH_SUBSET_CELLS
    report_and_check(corpus, target, report)


# -- the harness itself, through real kernels -------------------------------------------------

SELF_TEST_CELLS = [
    "import random\nimport numpy as np\nimport pandas as pd\nrandom.seed(3)\nnp.random.seed(3)",
    "import os\nprint(os.getcwd(), object())\nhere = os.getcwd()",
    "values = [random.random() for _ in range(3)]\narray = np.random.rand(4)\narray",
    "%matplotlib inline",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot(values)",
    "frame = pd.read_csv('data.csv')\nframe['c'] = frame.a + frame.b\nframe",
    "def double(x, k=2):\n    return [v * k for v in x]\nclass Box:\n    def __init__(self):\n"
    "        self.items = []\nbox = Box()\nbox.items.append(double(values))",
    "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\nprint('shown')",
    "import time\nstamp = time.time()",
    "with open('out.txt', 'w') as f:\n    f.write(str(len(values)))",
    "from sklearn.linear_model import LinearRegression\n"
    "model = LinearRegression().fit(frame[['a']], frame.b)",
    "1 / 0",
]


@pytest.fixture(scope="module")
def self_test(tmp_path_factory: pytest.TempPathFactory) -> NotebookReport:
    """A small notebook run in L and C and three test targets: cells unchanged (I), each cell
    also binding a name `marker` (M), each cell under %%capture (K)."""
    folder = tmp_path_factory.mktemp("selftest")
    (folder / "data.csv").write_text("a,b\n1,2\n3,4\n")
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in SELF_TEST_CELLS])
    nbformat.write(notebook, str(folder / "self.ipynb"))
    return run_notebook(folder / "self.ipynb", ("I", "M", "K"), prefixes={
        "I": "", "M": "marker = 1\n", "K": "%%capture\n"})


def test_a_kernel_running_cells_unchanged_compares_equal(self_test: Any) -> None:
    """No harness artefact: paths, addresses, snapshots and hash seeds all compare equal."""
    assert not self_test.aborted
    counts = self_test.counts("I")
    assert counts["differs"] == 0, render([self_test])
    assert counts["local-only"] == 1 and counts["counted"] == len(SELF_TEST_CELLS) - 1
    stamp = self_test.cells[8]
    assert stamp.status["I"] == "random" and "value:stamp" in stamp.random["I"]


def test_an_extra_name_is_one_first_difference_then_inherited(self_test: Any) -> None:
    first, *rest = [c for c in self_test.cells if "M" in c.status and c.status["M"] != "local-only"]
    assert first.chain["M"] == "first"
    assert [(d.aspect, d.name) for d in first.differences if d.target == "M"] == [
        ("names", "marker")]
    assert {c.chain.get("M") for c in rest} == {"inherited"}


def test_captured_output_and_displays_are_differences(self_test: Any) -> None:
    def aspects(number: int) -> set[str]:
        return {d.aspect for d in self_test.cells[number - 1].differences if d.target == "K"}

    assert aspects(2) == {"stdout"}
    assert aspects(5) == {"displays"}
    assert aspects(8) == {"stdout", "displays"}
    assert aspects(12) == set()  # %%capture does not swallow the error


# -- fingerprints and comparison, without kernels ---------------------------------------------


@pytest.fixture
def ns() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    fingerprint.setup([["/tmp/kernel-root", "<ROOT>"]], ns=namespace)
    return namespace


def names(ns: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {k: tuple(v) for k, v in json.loads(fingerprint.snapshot())["names"].items()}


def test_objects_differing_only_by_memory_address_compare_equal(ns: dict[str, Any]) -> None:
    ns["thing"] = object()
    first = names(ns)["thing"]
    ns["thing"] = object()
    assert names(ns)["thing"] == first
    assert first[1].startswith("<object object at 0x…>")


def test_the_kernels_own_directory_is_masked(ns: dict[str, Any]) -> None:
    ns["path"] = "/tmp/kernel-root/nb/data.csv"
    assert names(ns)["path"][1] == "'<ROOT>/nb/data.csv'"


def test_an_in_place_change_changes_the_fingerprint(ns: dict[str, Any]) -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    ns.update(items=[1, [2, 3]], array=np.arange(4.0), frame=pd.DataFrame({"a": [1, 2]}))
    before = names(ns)
    ns["items"][1].append(4)
    ns["array"][2] = -1
    ns["frame"].loc[0, "a"] = 9
    after = names(ns)
    for name in ("items", "array", "frame"):
        assert before[name][0] != after[name][0], name


def test_a_fitted_estimator_differs_from_an_unfitted_one(ns: dict[str, Any]) -> None:
    linear = pytest.importorskip("sklearn.linear_model")
    ns["model"] = linear.LinearRegression()
    unfitted = names(ns)["model"]
    ns["model"].fit([[1], [2], [3]], [1, 2, 4])
    fitted = names(ns)["model"]
    assert unfitted[0] != fitted[0] and "coef_" in fitted[1]
    assert "not fitted" in unfitted[1]


def test_functions_compare_by_code_not_by_where_they_were_compiled(ns: dict[str, Any]) -> None:
    def compiled(source: str, filename: str) -> Any:
        space: dict[str, Any] = {}
        exec(compile(source, filename, "exec"), space)
        return space["f"]

    ns["f"] = compiled("def f(x):\n    return x + 1\n", "/tmp/ipykernel_1/1.py")
    first = names(ns)["f"]
    ns["f"] = compiled("\n\ndef f(x):\n    return x + 1\n", "<remote-cell 1>")
    assert names(ns)["f"][0] == first[0]
    ns["f"] = compiled("def f(x):\n    return x + 2\n", "/tmp/ipykernel_1/1.py")
    assert names(ns)["f"][0] != first[0]


def test_aliases_and_seeded_generators_are_part_of_the_state(ns: dict[str, Any]) -> None:
    import random

    ns["a"] = ns["b"] = [1]
    random.seed(5)
    shared = names(ns)
    assert shared[fingerprint.ALIASES][1] == "a is b"
    ns["b"] = [1]
    random.random()
    apart = names(ns)
    assert apart[fingerprint.ALIASES][1] == "no shared objects"
    assert shared[fingerprint.RANDOM][0] != apart[fingerprint.RANDOM][0]


def test_an_instance_of_a_replaced_class_is_noticed(ns: dict[str, Any]) -> None:
    def make() -> type:
        return type("Box", (), {"__module__": "__main__"})

    ns["Box"] = make()
    ns["box"] = ns["Box"]()
    assert names(ns)[fingerprint.ALIASES][1] == "no shared objects"
    ns["Box"] = make()  # a copy of the class came back: isinstance(box, Box) is now False
    assert names(ns)[fingerprint.ALIASES][1] == "type(box) is not Box"


def test_explain_walks_down_to_the_differing_part(ns: dict[str, Any]) -> None:
    ns["config"] = {"layers": [1, 2, 3], "name": "x"}
    top = json.loads(fingerprint.explain("config", []))
    assert [c[0] for c in top["children"]] == ["['layers']", "['name']"]
    leaf = json.loads(fingerprint.explain("config", ["['layers']", "[2]"]))
    assert leaf["summary"] == "3"


def observation(stdout: str = "", ename: str | None = None, **values: str) -> Observation:
    return Observation(ename=ename, stdout=stdout,
                       names={k: (v, v) for k, v in values.items()})


def compare(seen: dict[str, Observation], before: dict[str, dict] | None = None,
            diverged: dict[str, int] | None = None, source: str = "x = 1") -> tuple:
    before = before or {role: {} for role in seen}
    reads = Reads().of(source)
    return compare_cell(Cell(3, source, "code"), seen, before, "R", diverged or {},
                        "nb.ipynb", reads)


def test_a_cell_where_local_and_control_differ_is_random_not_a_failure() -> None:
    found, random, _ = compare({"L": observation("0.1\n"), "C": observation("0.7\n"),
                                "R": observation("0.3\n")})
    assert found == [] and random == ["stdout"]


def test_a_deterministic_difference_is_reported_with_both_sides() -> None:
    found, random, after = compare({"L": observation(ename=None, x="1"),
                                    "C": observation(ename=None, x="1"),
                                    "R": observation(ename="NameError")})
    assert random == []
    assert [(d.aspect, d.name, d.chain) for d in found] == [
        ("error", "", "first"), ("names", "x", "first")]
    assert found[0].description.startswith("L: ok vs R: NameError")
    assert after == {"x": 3}


def test_a_name_that_already_differed_and_was_left_alone_is_inherited() -> None:
    before = {"L": {"x": ("1", "1")}, "C": {"x": ("1", "1")}, "R": {"x": ("2", "2")}}
    seen = {"L": observation(x="1", y="5"), "C": observation(x="1", y="5"),
            "R": observation(x="2", y="5")}
    found, _, after = compare(seen, before, {"x": 1}, source="y = 5")
    assert [(d.name, d.chain, d.origin) for d in found] == [("x", "inherited", 1)]
    assert after == {"x": 1}
    found, _, _ = compare({**seen, "R": observation(x="2", y="6")}, before, {"x": 1},
                          source="y = x + 4")
    assert {(d.name, d.chain) for d in found} == {("x", "inherited"), ("y", "downstream")}
    found, _, _ = compare({**seen, "R": observation(x="2", y="6")}, before, {"x": 1},
                          source="y = 6")
    assert {(d.name, d.chain) for d in found} == {("x", "inherited"), ("y", "first")}


def test_accepted_differences_cover_what_they_name_and_what_it_passes_on() -> None:
    report = NotebookReport("p/nb.ipynb", ("R",))
    for number, chain in ((2, "first"), (3, "inherited")):
        cell = CellReport(Cell(number, "", "code"))
        cell.differences.append(Difference("p/nb.ipynb", number, "R", "value", "", "x",
                                           chain, origin=2))
        report.cells.append(cell)
    mark_accepted([report], [{"notebook": "p/*", "cell": 2, "aspect": "value", "name": "x",
                              "reason": "because"}])
    assert unaccepted([report]) == []
    mark_accepted([report], [{"notebook": "p/*", "cell": 2, "aspect": "stdout",
                              "reason": "because"}])
    assert len(unaccepted([report])) == 2


def test_the_known_differences_file_is_valid() -> None:
    load_known()


@pytest.mark.parametrize(("source", "local_only"), [
    ("x = 1", False), ("%matplotlib inline", True), ("!ls", True), ("files = !ls", True),
    ("%%time\nx = 1", True), ("len?", True), ("x = 1  # what?", False),
    ("print('%d' % 3)", False)])
def test_cells_with_ipython_syntax_are_local_only(source: str, local_only: bool) -> None:
    assert ipython_only(source) is local_only


def test_a_file_difference_is_shown_where_the_copies_part(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 70000 + b"CreationDate 171500" + b"y" * 10)
    (tmp_path / "b").write_bytes(b"x" * 70000 + b"CreationDate 171503" + b"y" * 10)
    (tmp_path / "c").write_bytes((tmp_path / "a").read_bytes())
    where = locate_bytes(tmp_path / "a", tmp_path / "b", "R")
    assert where.startswith("first differing byte 70018:") and "171500" in where
    assert locate_bytes(tmp_path / "a", tmp_path / "c", "R") == ""


def test_repeated_displays_are_written_once_with_their_count() -> None:
    assert shorten(["clear_output (wait)", "display image/png"] * 9) == \
        "[clear_output (wait), display image/png] × 9"
    assert shorten(["result text/plain"]) == "[result text/plain]"
