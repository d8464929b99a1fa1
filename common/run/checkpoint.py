"""Checkpoints: everything training changes, saved after each whole epoch so a run can go on.

A run's state is what its loop changes: the parameters, the momentum buffers (or the
optimizer that keeps them), the generator that shuffles the data, and torch's global random
number generator (what dropout draws from on the CPU; on a GPU it draws from that GPU's
generator, saved too, as cuda_rng). `--checkpoint PATH` writes them after every
complete epoch; `--resume PATH` puts them back, and training continues with the next epoch,
ending with the numbers an uninterrupted run would have: bit for bit on the CPU with a fixed
--threads, to round-off otherwise (see docs/running.md, Determinism).

The file is a numpy `.npz` archive: every array under a key of its own, and one JSON text
(`meta`) describing the rest. It holds no pickled objects, so loading one never runs code,
and the numpy stage reads and writes it without torch. Each member carries zip's CRC-32, so
bytes damaged on disk are refused ("Bad CRC-32"); a file rewritten by a program, with numbers
of the right shapes and dtypes, cannot be told from a real one. It is written atomically, to a
temporary file that is then renamed over the old one, so an interruption or a full disk
while saving leaves the previous checkpoint as it was (a process killed in the middle of a
save can leave a hidden .NAME.PID-XXXX.tmp beside it). The temporary name is the writer's own,
and a run holds its --checkpoint locked (`hold()`) from its start to its end, so two runs given
the same --checkpoint never write into one file: the second refuses in one line. An existing
file that is not a checkpoint of this course (a source file, a data file) is never replaced.
"""
from __future__ import annotations

import fcntl
import json
import numbers
import os
import secrets
import shutil
import zipfile
from pathlib import Path

import numpy as np

from common.errors import WRITE_FAILED, CourseError, one_line
from common.loaded import loaded_torch
from common.weights import PARAM_SHAPES

FORMAT = 2
HYPERPARAMETERS = ("lr", "momentum", "dropout")  # may change on resume; announced in one line

_torch = loaded_torch  # looked up, never imported, here: the numpy stage uses this module too


# ---------------------------------------------------------------- the state of one object
def describe(obj) -> str:
    """What kind of training state an object is; the checkpoint stores one entry per object."""
    torch = _torch()
    if obj is None:
        return "none"
    if isinstance(obj, np.random.Generator):
        return "numpy generator"
    if torch is not None:
        if isinstance(obj, torch.nn.Module):
            return "module"
        if isinstance(obj, torch.optim.Optimizer):
            return "optimizer"
        if isinstance(obj, torch.Generator):
            return "torch generator"
        if isinstance(obj, torch.amp.GradScaler):
            return "grad scaler"
    if isinstance(obj, dict):
        return "arrays"
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def state_of(obj):
    kind = describe(obj)
    if kind == "none":
        return None
    if kind == "numpy generator":
        return obj.bit_generator.state
    if kind in ("module", "optimizer", "grad scaler"):
        return obj.state_dict()
    if kind == "torch generator":
        return obj.get_state()
    return dict(obj)  # arrays: parameters or momentum buffers by name


def restore(obj, state, where: str, dtype: str) -> None:
    """Put a saved state back into `obj`, in place, after checking it field by field; `dtype`
    is the run's --dtype, the one arrays new to `obj` (momentum buffers) must have."""
    kind = describe(obj)
    try:
        if kind == "numpy generator":
            obj.bit_generator.state = _checked_generator_state(obj, state, where)
        elif kind == "torch generator":
            obj.set_state(_checked_tensor(state, where).to("cpu"))
        elif kind == "module":
            obj.load_state_dict(_checked_module_state(obj, state, where))
        elif kind == "optimizer":
            obj.load_state_dict(_checked_optimizer_state(obj, state, where))
        elif kind == "grad scaler":
            obj.load_state_dict(_checked_scaler_state(obj, state, where))
        elif kind == "arrays":
            _restore_arrays(obj, state, where, dtype)
    except CourseError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as err:
        raise CourseError(f"{where}: does not fit this run ({_first_line(err)})") from None


def _checked_generator_state(generator, state, where):
    if not isinstance(state, dict) or state.get("bit_generator") != generator.bit_generator.state["bit_generator"]:
        raise CourseError(f"{where}: the data-order generator's state is missing or of another kind")
    return state


def _checked_tensor(value, where):
    torch = _torch()
    if not isinstance(value, torch.Tensor):
        raise CourseError(f"{where}: expected a tensor, found {type(value).__name__}")
    return value


def _checked_module_state(module, state, where):
    if not isinstance(state, dict):
        raise CourseError(f"{where}: the model's state is not a dictionary")
    own = module.state_dict()
    if set(state) != set(own):
        raise CourseError(f"{where}: the model's tensors are {sorted(state)}, this model has {sorted(own)}")
    for name, value in state.items():
        _check_like(_checked_tensor(value, f"{where}: {name}"), own[name], f"{where}: {name}")
    return state


def _checked_scaler_state(scaler, state, where):
    """A disabled scaler (bfloat16, or --amp off) has an empty state; an enabled one its scale and counters."""
    own = scaler.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        raise CourseError(f"{where}: the gradient scaler's state has {sorted(state) if isinstance(state, dict) else state!r}, "
                          f"this run's has {sorted(own)}")
    return state


def _checked_optimizer_state(optimizer, state, where):
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise CourseError(f"{where}: the optimizer's state is not an optimizer state_dict")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise CourseError(f"{where}: the optimizer's state names no parameter of this model ({index!r})")
        for key, value in entry.items():
            if value is not None:  # SGD's momentum buffer, like its parameter (None: SGD starts a new one)
                _check_like(_checked_tensor(value, where), params[index], f"{where}: optimizer {key} of {index}")
    for saved, own in zip(state["param_groups"], optimizer.param_groups):
        if not isinstance(saved, dict):
            raise CourseError(f"{where}: the optimizer's state is not an optimizer state_dict")
        # dampening, nesterov, ... are set by the stage's code (lr and momentum by the command line);
        # a setting the file lacks takes this run's value
        for key, value in own.items():
            if key not in ("params", "lr", "momentum") and saved.setdefault(key, value) != value:
                raise CourseError(f"{where}: made with the optimizer's {key} {saved[key]!r}, this run has {value!r}")
    return state


def _check_like(value, like, where):
    if tuple(value.shape) != tuple(like.shape) or value.dtype != like.dtype:
        raise CourseError(f"{where}: {value.dtype} {tuple(value.shape)} where this run has "
                          f"{like.dtype} {tuple(like.shape)}")


def _restore_arrays(target: dict, state, where: str, dtype: str) -> None:
    """Parameters (a full dict, overwritten in place) or momentum buffers (filled in)."""
    if not isinstance(state, dict):
        raise CourseError(f"{where}: expected arrays by name")
    unknown = set(state) - set(PARAM_SHAPES)
    if unknown:
        raise CourseError(f"{where}: unknown parameter names {sorted(unknown)}")
    if target and set(state) != set(target):
        raise CourseError(f"{where}: holds {sorted(state)}, this run has {sorted(target)}")
    torch = _torch()
    for name, value in state.items():
        if not hasattr(value, "shape"):
            raise CourseError(f"{where}: {name} is a {type(value).__name__}, not an array")
        if tuple(value.shape) != PARAM_SHAPES[name]:
            raise CourseError(f"{where}: {name} has shape {tuple(value.shape)}, not {PARAM_SHAPES[name]}")
        if name in target:
            if torch is not None and isinstance(target[name], torch.Tensor):
                _check_like(value, target[name], f"{where}: {name}")
                with torch.no_grad():
                    target[name].copy_(value)
            else:
                _check_like(value, target[name], f"{where}: {name}")
                target[name][...] = value
        elif str(value.dtype).removeprefix("torch.") != dtype:  # the update keeps a buffer in --dtype
            raise CourseError(f"{where}: {name} is {value.dtype}, where this run has {dtype}")
        else:
            target[name] = value


# ---------------------------------------------------------------- a tree of state, as JSON and arrays
# JSON holds numbers, strings, booleans and None as they are; everything else becomes a
# one-key object: {"dict": [[key, value], ...]}, {"list": [...]}, {"tuple": [...]},
# {"array": "a3"} (a numpy array stored as a3) or {"tensor": "a3"} (a torch tensor).
def encode(value, arrays: dict):
    torch = _torch()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if torch is not None and isinstance(value, torch.Tensor):
        key = f"a{len(arrays)}"
        arrays[key] = value.detach().cpu().numpy()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode(v, arrays) for v in value]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def decode(value, arrays):
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"malformed entry {one_line(value, 60)}")
    (kind, content), = value.items()
    if kind in ("array", "tensor"):
        if not isinstance(content, str) or content not in arrays:
            raise ValueError(f"no array {content!r} in the file")
        array = arrays[content]
        if array.dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        array = np.array(array, dtype=array.dtype.newbyteorder("="))  # the same numbers, in this machine's byte order
        if kind == "array":
            return array
        torch = _torch()
        if torch is None:
            raise ValueError("a tensor in a checkpoint of the numpy stage")
        return torch.from_numpy(array)
    if kind == "dict" and isinstance(content, list) and all(isinstance(p, list) and len(p) == 2 for p in content):
        return {decode(k, arrays): decode(v, arrays) for k, v in content}
    if kind in ("list", "tuple") and isinstance(content, list):
        items = [decode(v, arrays) for v in content]
        return items if kind == "list" else tuple(items)
    raise ValueError(f"malformed entry of kind {kind!r}")


# ---------------------------------------------------------------- files
def check_writable(path: Path) -> None:
    """Refuse before training a checkpoint path that could never be written."""
    path = Path(path)
    if str(path) in ("", ".") or path.name == "":
        raise CourseError("--checkpoint: give a file name, e.g. --checkpoint ckpt.npz")
    if path.is_dir():
        raise CourseError(f"--checkpoint {path}: is a folder; give a file name inside it")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # this process's own name: every process of a distributed run checks the same path at once
        probe = folder / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.probe"
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as err:
        raise CourseError(f"--checkpoint {path}: cannot write there ({err.strerror or err})") from None


def check_replaceable(path: Path) -> None:
    """Refuse a checkpoint path that names a file of another kind (a source file, a data file):
    saving would replace it."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > 0 and not is_course_checkpoint(path):
        raise CourseError(f"--checkpoint {path}: that file exists and is not a checkpoint of this course; "
                          "it is left as it is: give a new file name (e.g. --checkpoint ckpt.npz)")


def is_course_checkpoint(path: Path) -> bool:
    """An .npz archive with the course's meta fields (checked no further: load() does that)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("meta.npy") as member:
            meta = json.loads(str(np.lib.format.read_array(member, allow_pickle=False)))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError):
        return False
    return isinstance(meta, dict) and {"format", "stage", "epoch"} <= meta.keys()


_held: dict[Path, int] = {}  # checkpoint path -> the open lock file this process holds


def hold(path: Path) -> None:
    """Lock --checkpoint PATH for this run (a hidden .NAME.lock beside it, locked with flock, which
    the system releases when the process ends however it ends); refuse if another run holds it."""
    path = Path(path).absolute()
    if path in _held:
        return
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CourseError(f"--checkpoint {path}: cannot write there ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CourseError(f"--checkpoint {path}: another run (process {holder}) is writing that checkpoint; "
                          "wait for it to end, or give this run another --checkpoint") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd


def release(path: Path | None) -> None:
    """The run is over: another may write the checkpoint now."""
    fd = _held.pop(Path(path).absolute(), None) if path is not None else None
    if fd is not None:
        os.close(fd)  # closing the file releases the lock


def save(path: Path, meta: dict, objects: list, rng_by_rank: list | None = None) -> None:
    """Write a checkpoint atomically: a crash or a full disk leaves the old file or the new one.
    rng_by_rank: in a run of several processes, each one's (CPU, GPU or None) generator states."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    meta = dict(meta, format=FORMAT, state=[{"kind": describe(o), "value": encode(state_of(o), arrays)}
                                             for o in objects])
    torch = _torch()
    if torch is not None:
        # as numpy arrays, so that a stage without torch (stage 1) can still read the file
        meta["torch_rng"] = encode(torch.get_rng_state().numpy(), arrays)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            meta["cuda_rng"] = encode([state.numpy() for state in torch.cuda.get_rng_state_all()], arrays)
    if rng_by_rank is not None:
        meta["rng_by_rank"] = encode(rng_by_rank, arrays)
    try:
        write_atomically(path, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), **arrays), durable=True)
    except OSError as err:
        raise CourseError(f"cannot write the checkpoint {path}: {err.strerror or err}"
                          f"{free_space_note(path)}; the previous checkpoint is unchanged", WRITE_FAILED) from None


def write_atomically(path: Path, write, durable: bool = False) -> None:
    """Write a file through a temporary name, renamed into place once complete: a reader never
    sees half a file, and a failed write leaves no temporary file behind. A failure is an
    OSError (torch.save reports a failed write as a RuntimeError, turned into one here).
    durable: on disk before the rename, so that even a crash of the machine leaves the old file
    or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # this writer's own
    try:
        with open(temporary, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if isinstance(err, RuntimeError):
            raise OSError(str(err).splitlines()[0]) from None
        raise


def save_figure(fig, path: Path, dpi: int) -> None:
    """A matplotlib figure written like the records (write_atomically): a failed write leaves
    the previous figure as it was, never a partial image."""
    path = Path(path)
    write_atomically(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi))


def load(path: Path, stage: str | None = None) -> tuple[dict, list]:
    """Read a checkpoint: its meta fields (checked for type) and the saved state of each object.
    stage: the stage resuming; a checkpoint of another stage is refused as such before its arrays
    are decoded (the numpy stage cannot decode a torch stage's tensors, and would call it damaged)."""
    path = Path(path)
    where = f"--resume {path}"
    if path.is_dir():
        raise CourseError(f"{where}: a folder, not a file")
    if not path.is_file():
        raise CourseError(f"{where}: no such file")
    try:
        with open(path, "rb") as f:  # our own handle, so it is closed whatever np.load does
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("one .npy array, not an .npz archive")
            with archive:
                arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    # Damaged bytes make zipfile, numpy's header parser and json raise many kinds of error:
    # BadZipFile, EOFError, ValueError, NotImplementedError ("zip file version 10.9"),
    # RuntimeError ("... is encrypted"), tokenize.TokenError (a header's brackets left open), ...
    except Exception as err:
        raise CourseError(f"{where}: not a readable checkpoint ({_first_line(err)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CourseError(f"{where}: not a checkpoint in this course's format {FORMAT} (another program's, "
                          "or an older version's)")
    _check_fields(meta, where)
    if stage is not None and meta["stage"] != stage:
        raise CourseError(f"{where}: from another stage: made with stage {meta['stage']!r}, but this run is {stage!r}")
    try:
        states = [decode(entry["value"], arrays) for entry in meta["state"]]
        for key in ("torch_rng", "cuda_rng", "rng_by_rank"):
            if key in meta:
                meta[key] = decode(meta[key], arrays)
    except (ValueError, TypeError, KeyError) as err:
        raise CourseError(f"{where}: damaged ({_first_line(err)})") from None
    return meta, states


FIELD_TYPES = {"stage": str, "dtype": str, "batch_size": int, "seed": int, "steps_per_epoch": int,
               "epoch": int, "step": int, "state": list, "hyperparameters": dict}


def _check_fields(meta: dict, where: str) -> None:
    for key, kind in FIELD_TYPES.items():
        if key not in meta:
            raise CourseError(f"{where}: damaged (no {key!r} field)")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CourseError(f"{where}: damaged ({key!r} is {type(meta[key]).__name__}, not {kind.__name__})")
    if meta["epoch"] < 1 or meta["step"] < 0 or meta["steps_per_epoch"] < 1:
        raise CourseError(f"{where}: damaged (epoch {meta['epoch']}, step {meta['step']})")
    for entry in meta["state"]:
        if not isinstance(entry, dict) or set(entry) != {"kind", "value"}:
            raise CourseError(f"{where}: damaged (a malformed state entry)")


def free_space_note(path: Path) -> str:
    """', 12 MB free on that disk' or nothing, for messages about failed writes."""
    try:
        free = shutil.disk_usage(Path(path).resolve().parent).free
    except OSError:
        return ""
    return f" ({free / 2**20:.0f} MB free on that disk)"


def _first_line(err: BaseException) -> str:
    return one_line(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
