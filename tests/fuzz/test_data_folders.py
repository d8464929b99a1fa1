"""Fuzzing the .npy loader: whatever a data folder holds, `load_data` keeps one promise.

It returns arrays that pass the checks (uint8 images (N, 32, 32, 3), native int64 labels in
0-9, as many labels as images) or it raises a `CourseError` whose message is one line: never
another exception, never a MemoryError, and never an allocation much larger than the folder.
A folder is built healthy, then spoiled by up to three faults drawn from FAULTS; a second test
aims at the .npy header, where numpy's parser runs; a third runs stage 1 as a learner would.
Examples: 200, 200, and one draw of two folders (four stage-1 runs). No deadlines: these tests
never assert on speed. `pytest -m fuzz --hypothesis-show-statistics` shows what was exercised.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data import load_data
from common.errors import CourseError
from tests.helpers import ROOT, event

pytestmark = pytest.mark.fuzz

INTEGER_DTYPES = [f"{order}{kind}{width}" for kind in "iu" for width in (1, 2, 4, 8) for order in "<>"]
OTHER_DTYPES = ["<f2", "<f4", ">f8", "|b1", "|V3", "|S5", "<U1", ">c8", "<m8[s]", "<M8[D]"]
# Python's parser may use a few MB on a header of numpy's largest size (10000 characters).
PARSER_ALLOWANCE = 16 * 2**20
ABSURD_LENGTHS = [10**5, 10**9, 10**12, 2**62, 2**64 + 3, -1, -(10**6)]
STRAY_NAMES = ["train_x_1.npy.bak", "train_x_final.npy", "train_x_01.npy", "train_x_9.npy", "train_x.npy",
               "train_x_2.npy", "notes.txt", "mean.npy", "train_y_0.npy", "test_x.npy~"]


# ---------------------------------------------------------------- building folders
def npy(array: np.ndarray, version=(1, 0), fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asfortranarray(array) if fortran else array, version=version,
                              allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def random_array(draw, rng: np.random.Generator) -> np.ndarray:
    """Any dtype, any of a few shapes, bytes from the generator."""
    n = draw(st.integers(0, 4))
    shape = draw(st.sampled_from([(n, 32, 32, 3), (n,), (n, 32, 32), (n, 3, 32, 32), (n, 32, 32, 4), (), (n, 1)]))
    dtype = np.dtype(draw(st.sampled_from(["|u1"] + INTEGER_DTYPES + OTHER_DTYPES)))
    size = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(rng.bytes(size), dtype).reshape(shape)


def healthy_npy_folder() -> dict:
    """One fixed folder that loads: a shard, big-endian int32 and uint8 labels."""
    rng = np.random.default_rng(0)
    return {"train_x_0.npy": npy(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
            "train_y.npy": npy(rng.integers(0, 10, 8).astype(">i4")),
            "test_x.npy": npy(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)),
            "test_y.npy": npy(rng.integers(0, 10, 4).astype("u1"))}


@st.composite
def healthy_folders(draw):
    """A folder that must load: files by name, and the four arrays they hold."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_train, n_test = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    label_dtype = draw(st.sampled_from(INTEGER_DTYPES))
    arrays = (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test))
    version = draw(st.sampled_from([(1, 0), (2, 0)]))
    files = {"train_y.npy": npy(arrays[1].astype(label_dtype), version),
             "test_x.npy": npy(arrays[2], version, fortran=draw(st.booleans())),
             "test_y.npy": npy(arrays[3].astype(label_dtype), version)}
    shards, first, digits = draw(st.integers(0, 3)), draw(st.sampled_from([0, 1])), draw(st.sampled_from([1, 2]))
    if shards == 0:
        files["train_x.npy"] = npy(arrays[0], version)
    for k, part in enumerate(np.array_split(arrays[0], shards) if shards else []):  # parts may be empty
        files[f"train_x_{k + first:0{digits}d}.npy"] = npy(part, version, fortran=draw(st.booleans()))
    return files, arrays


# ---------------------------------------------------------------- faults: each spoils one file or adds one
def pick(draw, files: dict) -> str:
    """One of the files (not a folder put in place of one)."""
    return draw(st.sampled_from(sorted(name for name, content in files.items() if content is not None)))


def replace_with_random_array(draw, files):
    files[pick(draw, files)] = npy(random_array(draw, np.random.default_rng(draw(st.integers(0, 99)))))


def labels_out_of_range(draw, files):
    labels = np.array(draw(st.lists(st.integers(-3, 12), max_size=6))).astype(draw(st.sampled_from(INTEGER_DTYPES)))
    files[draw(st.sampled_from(["train_y.npy", "test_y.npy"]))] = npy(labels)


def truncate(draw, files):
    name = pick(draw, files)
    files[name] = files[name][:draw(st.integers(0, max(len(files[name]) - 1, 0)))]


def append_bytes(draw, files):
    files[pick(draw, files)] += draw(st.binary(min_size=1, max_size=64))


def garbage(draw, files):
    files[pick(draw, files)] = draw(st.binary(max_size=200))


def absurd_header(draw, files):
    """A header claiming a length the file cannot hold (or a negative one), over a little data."""
    descr = draw(st.sampled_from(["|u1", "<i8", ">i4", "|V3"]))
    length = draw(st.sampled_from(ABSURD_LENGTHS))
    shape = draw(st.sampled_from([(length, 32, 32, 3), (length,), (length, length)]))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape})
    files[pick(draw, files)] = header.getvalue() + bytes(draw(st.sampled_from([0, 8, 3072])))


REAL_HEADER = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }"
PATHOLOGICAL_HEADERS = [
    b"-" * 9000 + b"1",  # Python's parser gives up on the nesting with a MemoryError
    b"a." * 4900 + b"a",  # ... or a RecursionError, at Python's usual limit (hypothesis raises it while it runs)
    b"{[]: 1}",  # an unhashable dictionary key: TypeError
    b" " * 10_001,  # over numpy's 10000-character limit, which its message explains in three lines
    b"{'descr': 'O', 'fortran_order': False, 'shape': (3,), }",  # pickled objects would follow
    b"{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (3,), }",
]


@st.composite
def npy_files_with_odd_headers(draw) -> bytes:
    """Magic, length field and header text: a real header cut short, random bytes, or a pathological one."""
    text = draw(st.integers(0, len(REAL_HEADER)).map(lambda k: REAL_HEADER[:k].encode())  # brackets left open
                | st.binary(max_size=120) | st.sampled_from(PATHOLOGICAL_HEADERS))
    version = draw(st.sampled_from([1, 2, 3]))
    field = 2 if version == 1 else 4  # bytes in the header's length field
    # Mostly the true length; or past the end of the file, a little or as far as the field allows.
    length = draw(st.sampled_from([len(text), len(text), len(text) + 10, 2 ** (8 * field) - 1]))
    return np.lib.format.magic(version, 0) + length.to_bytes(field, "little") + text


def odd_header(draw, files):
    files[pick(draw, files)] = draw(npy_files_with_odd_headers())


def pickled_objects(draw, files):
    files[pick(draw, files)] = npy(np.array(draw(st.lists(st.integers(0, 9), max_size=5)) + [None], dtype=object))


def missing_file(draw, files):
    del files[pick(draw, files)]


def folder_instead_of_file(draw, files):
    files[pick(draw, files)] = None


def stray_file(draw, files):
    content = draw(st.sampled_from([b"", b"not an array", npy(np.zeros((1, 32, 32, 3), np.uint8))]))
    files[draw(st.sampled_from(STRAY_NAMES))] = content


FAULTS = [replace_with_random_array, labels_out_of_range, truncate, append_bytes, garbage, absurd_header,
          odd_header, pickled_objects, missing_file, folder_instead_of_file, stray_file]


@st.composite
def data_folders(draw, min_faults: int = 0):
    """Files by name (None: a folder), and the arrays they must load to, or None if spoiled."""
    files, arrays = draw(healthy_folders())
    faults = draw(st.lists(st.sampled_from(FAULTS), min_size=min_faults, max_size=3))
    for fault in faults:
        if any(content is not None for content in files.values()):
            fault(draw, files)
    event(f"faults: {len(faults)}")
    return files, None if faults else arrays


def write_folder(folder: Path, files: dict) -> Path:
    for name, content in files.items():
        if content is None:
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(content)
    return folder


# ---------------------------------------------------------------- the promise
def assert_checked(data) -> None:
    """The checks `validate` makes, written out again so that a bug in it cannot hide here."""
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (32, 32, 3) and len(x) > 0
        assert y.dtype == np.dtype(np.int64) and y.dtype.isnative and y.shape == (len(x),)
        assert 0 <= y.min() and y.max() <= 9


def load_within_memory(folder: Path):
    """load_data's result (or CourseError), and the peak memory numpy and Python allocated for it."""
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    try:
        return load_data("auto", folder, announce=False), tracemalloc.get_traced_memory()[1]
    except CourseError as err:
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def outcome(message: str) -> str:
    """The kind of refusal, for hypothesis's statistics: the message's first words after its path."""
    reason = message.split(": ", 1)[-1]
    return reason.split(" (")[0].split(",")[0][:50]


# 200: 2000 found nothing more (two runs), at about a hundredth of a second an example. No deadline:
# never assert on speed.
@settings(max_examples=200, deadline=None, database=None)
@given(data_folders())
def test_load_data_returns_checked_arrays_or_one_line(folder_and_arrays):
    files, arrays = folder_and_arrays
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp), files)
        folder_bytes = sum(len(c) for c in files.values() if c is not None)
        result, peak = load_within_memory(folder)
    # Labels widen to int64 (8x a one-byte file) and shards are copied once when joined.
    assert peak <= 10 * folder_bytes + PARSER_ALLOWANCE, f"{peak:,} bytes allocated for a {folder_bytes:,}-byte folder"
    event("loaded" if not isinstance(result, CourseError) else "refused: " + outcome(str(result)))
    if isinstance(result, CourseError):
        assert arrays is None, f"a healthy folder was refused: {result}"
        assert str(result) and "\n" not in str(result)
        return
    assert_checked(result)
    if arrays is not None:
        for loaded, expected in zip((result.train_x, result.train_y, result.test_x, result.test_y), arrays):
            np.testing.assert_array_equal(loaded, expected)


@settings(max_examples=200, deadline=None, database=None)  # 2000 found nothing more (two runs)
@given(npy_files_with_odd_headers(), st.sampled_from(["train_x_0.npy", "train_y.npy", "test_x.npy", "test_y.npy"]))
def test_any_npy_header_is_refused_in_one_line(tmp_path_factory, content, name):
    """Headers are where numpy's parser runs: the one file is spoiled, the rest of the folder is healthy."""
    folder = write_folder(tmp_path_factory.mktemp("header"), healthy_npy_folder() | {name: content})
    result, peak = load_within_memory(folder)
    event(outcome(str(result)))
    assert isinstance(result, CourseError) and "\n" not in str(result)
    assert peak <= PARSER_ALLOWANCE, f"{peak:,} bytes allocated for a header of {len(content):,} bytes"


# ---------------------------------------------------------------- the same promise, seen by a learner
def with_absurd_test_images(files: dict) -> dict:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 32, 32, 3)})
    return files | {"test_x.npy": header.getvalue() + bytes(3072)}


@settings(max_examples=1, deadline=None, database=None)
@given(st.lists(data_folders(min_faults=1), min_size=2, max_size=2))  # spoiled: most runs stop at the data
def test_stage_one_exits_0_or_2_with_one_line(tmp_path_factory, drawn):
    """Two folders that must give 0 and 2, and two drawn ones, each through `python -m stages.stage01_numpy`."""
    folders = [healthy_npy_folder(), with_absurd_test_images(healthy_npy_folder())] + [files for files, _ in drawn]
    runs = []
    for files in folders:  # all started before any is awaited: the runs overlap
        folder = write_folder(tmp_path_factory.mktemp("folder"), files)
        command = [sys.executable, "-m", "stages.stage01_numpy", "--data-dir", str(folder), "--max-steps", "1",
                   "--out", str(tmp_path_factory.mktemp("runs"))]
        runs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [(*run.communicate(), run.returncode) for run in runs]  # communicate waits for the end
    for out, err, code in results:
        assert code in (0, 2) and "Traceback" not in out + err, err
        if code == 2:
            assert err.count("\n") == 1 and err.startswith("stage01_numpy: error: "), err
    assert [code for _, _, code in results[:2]] == [0, 2]
    assert "test_x.npy: not a readable .npy file (its header describes" in results[1][1]
