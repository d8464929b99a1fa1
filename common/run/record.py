"""The record of a run, runs/<stage>/<timestamp>/: its folder, its CSV files written row by row,
and the files written whole (options.json, summary.json, ...), none ever left half-written."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from common.errors import BAD_INPUT, WRITE_FAILED, CourseError
from common.loaded import loaded_torch
from common.run import checkpoint
from common.weights import PARAM_SHAPES

LAYERS = tuple(dict.fromkeys(name.split(".")[0] for name in PARAM_SHAPES))  # conv1, conv2, fc1, fc2, fc3
CSV_HEADERS = {"losses.csv": ("step", "epoch", "loss"),
               "grad_norms.csv": ("step",) + LAYERS,
               "accuracy.csv": ("epoch", "step", "test_accuracy", "seconds"),
               "threads.csv": ("step", "threads", "cores_busy_elsewhere")}


class Record:
    """The record folder of one run and its files. With `folder=None` (every process of a
    distributed run but one) nothing is written, and every call is a no-op."""

    def __init__(self, out: Path | None, stage: str, options: dict):
        self.stage, self.folder = stage, Path(os.devnull)
        self.files: dict[str, RecordFile] = {}
        if out is not None:
            self.folder = new_record_dir(Path(out) / stage)
            self.write_json("options.json", options)
        for name, header in CSV_HEADERS.items():
            self.files[name] = RecordFile(None if out is None else self.folder / name, header)

    @property
    def writes(self) -> bool:
        return self.folder != Path(os.devnull)

    def row(self, name: str, values) -> None:
        self.files[name].write_row(values)

    def write_json(self, name: str, value: dict) -> None:
        if self.writes:
            write_whole(self.folder / name, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))

    def write_text(self, name: str, text: str) -> None:
        if self.writes:
            write_whole(self.folder / name, lambda f: f.write(text.encode()))

    def save_params(self, params: dict) -> None:
        """params.npz, and model.pt when the values are tensors (on the CPU, so it loads anywhere)."""
        if not self.writes:
            return
        arrays = {name: as_numpy(value) for name, value in params.items()}
        write_whole(self.folder / "params.npz", lambda f: np.savez(f, **arrays))
        torch = loaded_torch()
        if torch is not None and any(isinstance(v, torch.Tensor) for v in params.values()):
            state = {name: value.detach().cpu().clone() for name, value in params.items()}
            write_whole(self.folder / "model.pt", lambda f: torch.save(state, f))

    def mark_incomplete(self, why: str, steps: int, signal_name: str | None = None) -> None:
        """summary.json says the run ended early, why, after how many steps, and by which signal;
        a full disk keeps its own message."""
        if not self.writes or not self.folder.exists():
            return
        summary = {"stage": self.stage, "complete": False, "ended": why, "steps": steps, "record": str(self.folder)}
        if signal_name is not None:
            summary["signal"] = signal_name
        try:
            self.write_json("summary.json", summary)
        except CourseError:
            pass

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def per_class_accuracy(predicted, labels: np.ndarray, n_classes: int) -> list[float]:
    """The accuracy of the predicted classes within each true class."""
    predicted = as_numpy(predicted).astype(np.int64)
    total = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels[predicted == labels], minlength=n_classes)
    return (correct / np.maximum(total, 1)).tolist()


def as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------- writing that survives failures
class RecordFile:
    """A CSV file written one row at a time, each row on disk when write_row() returns; a
    failed write is undone, so the file always ends with a complete row."""

    def __init__(self, path: Path | None, header: tuple):
        self.path, self._fd, self._size = path, None, 0
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as err:
                raise write_failed(path, err) from None
            self.write_row(header)

    def write_row(self, row) -> None:
        if self._fd is None:
            return
        data = (",".join(str(v) for v in row) + "\n").encode()
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as err:
            try:
                os.ftruncate(self._fd, self._size)  # drop the partial row: shrinking needs no space
            except OSError:
                pass
            raise write_failed(self.path, err) from None
        self._size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_whole(path: Path, write) -> None:
    """A record file written whole or not at all (checkpoint.write_atomically), one line if not."""
    try:
        checkpoint.write_atomically(path, write)
    except OSError as err:
        raise write_failed(path, err) from None


def write_failed(path: Path, err: OSError) -> CourseError:
    reason = err.strerror or str(err)
    return CourseError(f"cannot write {path}: {reason}{checkpoint.free_space_note(path)}; "
                       "everything written before is intact", WRITE_FAILED)


def new_record_dir(stage_dir: Path) -> Path:
    """runs/<stage>/<timestamp>[-N]/, never reusing a folder, so no earlier record is lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            path = stage_dir / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise CourseError(f"cannot write run records under --out {stage_dir.parent}: {err.strerror}",
                          BAD_INPUT) from None
    raise CourseError(f"cannot find a free record folder in {stage_dir}", BAD_INPUT)
