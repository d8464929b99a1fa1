"""Fuzzing the stage programs' command lines: whatever a learner types, a stage keeps its promise.

The promise: `main(argv)` ends with exit code 0 (done), 2 (bad input, refused) or 3 (training
diverged), never with another exception; a refusal or a divergence is one line on stderr that says
"error", blames what the learner gave and quotes it whole, not cut off; a refusal comes before the
first training step; and nothing already written is lost: a refused run leaves every file in its
folder as it was.

The tests draw argv from each stage's real options (stages 1, 6 and 10, whose option sets
differ) and run `main()` in this process. A few options are pinned after the drawn ones, where
argparse keeps the last value given: the data (a 20-image .npy folder, so that every accepted
value trains in a moment), --max-steps 2, --threads 1 and --workers 0 (the machine is shared).
Drawn values of those options are still parsed, and a bad one still refuses the run. Stage 1 runs
with torch hidden, as in its own process, where nothing imports torch: an `import torch` on its
way fails the test. curves.png is not drawn here: drawing it takes longer than the rest of a run
on 20 images (tests/runtime/test_record.py draws it). No deadlines: these tests never assert on
speed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.cli import build_parser, device_name
from common.errors import printable
from common.harness import load_stage
from tests.helpers import STAGES, event, has_optimizer, loads_torch, npy_data_dir, stage_number, takes_option

pytestmark = pytest.mark.fuzz

# Found by what they have: the numpy stage (1), the first with an optimizer (6), and the one with
# the most options, --workers, --dropout, --device and --data-parallel (10).
NUMPY_STAGE = stage_number(next(name for name in STAGES if not loads_torch(load_stage(name))))
OPTIM_STAGE = stage_number(next(name for name in STAGES if has_optimizer(load_stage(name))))
WIDEST_STAGE = stage_number(next(name for name in STAGES if takes_option("--data-parallel")(load_stage(name))))


def numbered(*numbers: int) -> list:
    return [pytest.param(n, id=str(n), marks=getattr(pytest.mark, f"stage{n}")) for n in numbers]


CLI_STAGES = numbered(NUMPY_STAGE, OPTIM_STAGE, WIDEST_STAGE)  # whose option sets differ
TRAIN_IMAGES, TEST_IMAGES = 20, 10


# ---------------------------------------------------------------- running a stage, and what it promised
class Outcome:
    """How `main(argv)` ended: its exit code, stdout, and the lines of stderr that are not the progress bar."""

    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err
        self.lines = message_lines(err)


PROGRESS_BAR = re.compile(r"\[\d+:\d+[<,]")  # "| 1/2 [00:00<00:01, 2.31step/s]", "0step [00:00, ?step/s]"


def message_lines(err: str) -> list[str]:
    """stderr without the progress bar, which redraws itself after a carriage return. A
    message is cut at a line break or a carriage return too: either one ends its line."""
    pieces = re.split(r"[\n\r\v\f]", err)
    return [p for p in pieces if p.strip() and not PROGRESS_BAR.search(p)]


@contextlib.contextmanager
def hidden_torch():
    """Run as the numpy stage's own process does: torch absent. `import torch` then raises
    ImportError, and `sys.modules.get("torch")` (how common/ looks for it) returns None."""
    saved = sys.modules.get("torch")
    sys.modules["torch"] = None
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["torch"]
        else:
            sys.modules["torch"] = saved


def outcome_of_main(stage_number: int, argv: list[str]) -> Outcome:
    """`main(argv)` in this process. Any exception but SystemExit escapes: that is a failure.
    A warning that Python shows by default counts as a line of stderr, where a learner's
    terminal would show it."""
    out, err = io.StringIO(), io.StringIO()
    stage = load_stage(stage_number)
    torch_state = contextlib.nullcontext() if loads_torch(stage) else hidden_torch()
    code = 0
    with torch_state, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=hidden)  # as Python's default filters do
        try:
            stage.main(argv)
        except SystemExit as exit_info:
            code = 0 if exit_info.code is None else exit_info.code
    assert isinstance(code, int), f"SystemExit({code!r})"
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    return Outcome(code, out.getvalue(), err.getvalue() + shown)


def assert_one_line_or_none(outcome: Outcome) -> None:
    """0: nothing on stderr but the progress bar; 2 or 3: one line that says error."""
    assert outcome.code in (0, 2, 3), f"exit {outcome.code}: {outcome.err[-500:]}"
    assert "Traceback" not in outcome.err + outcome.out
    if outcome.code == 0:
        assert outcome.lines == [], outcome.err[-500:]
    else:
        assert len(outcome.lines) == 1 and "error" in outcome.lines[0], outcome.err[-800:]


def no_step_taken(folder: Path) -> bool:
    """Every losses.csv under `folder` holds its header alone."""
    return all(len(f.read_text().splitlines()) == 1 for f in folder.rglob("losses.csv"))


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True, scope="module")
def figures_not_drawn():
    """save_curves() draws nothing here (see the module docstring)."""
    import common.run

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.run, "save_curves", lambda folder, source: None)
        yield


@pytest.fixture(scope="module")
def fuzz_data(tmp_path_factory) -> Path:
    """A data folder in the .npy layout: 20 training images, 10 test images."""
    return npy_data_dir(tmp_path_factory.mktemp("fuzz_data"), TRAIN_IMAGES, TEST_IMAGES)


@contextlib.contextmanager
def fresh_folder():
    """A new, empty working folder for one example: relative paths in argv land in it."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


# ---------------------------------------------------------------- command lines
# Numbers of every kind, as a learner (or a script) might type them.
NUMBER_TEXTS = [
    "0", "-0", "1", "2", "-1", "+3", " 2 ", "2\n", "\t7", "1_000", "0x10", "0b11", "1e3", "1.5", "-1.5", ".5",
    "1e-3", "0.9", "1e400", "-1e400", "1e-400", "5e-324", "nan", "-nan", "NaN", "inf", "-inf", "Infinity",
    "3.4028235e38", "3.4e38", "1e38", "1.7976931348623157e308", "4294967295", "4294967296",
    "9223372036854775807", "9223372036854775808", "1" + "0" * 30, "9" * 5000, "", " ", "fast", "１２", "٣",
    "²", "½", "1,5", "1/2", "1e", "e3", "--1", "-x", "1\n2", "1\r", "3\x1b[31m",
]
DEVICE_TEXTS = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:-1", "cuda:", "cuda:²", "cuda:٣", "CPU", "mps",
                "cuda:0 ", "cuda:99999999999999999999", "gpu"]
# Paths, relative to the example's fresh folder, which holds a_file and a_folder/ (see PRECIOUS).
PATH_TEXTS = ["new", "", " ", ".", "sub/", "a_file", "a_folder", "a_file/sub", "/proc/no-such-dir",
              "new\nline", "ünïcode", "-"]
OUT_TEXTS = ["runs", "", ".", "sub/runs", "a_file", "a_file/runs", "/proc/no-such-dir", "new\nline", "ünïcode"]
PRECIOUS = {"a_file": b"the learner's notes"}
UNKNOWN_TOKENS = ["--foo", "-x", "--", "-", "stray", "--lr2", "--LR", "---lr", "--d", "a\nb", "--\x1b[2J"]
ANY_TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=10)  # argv cannot hold a NUL


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn `weight` times as often as a strategy of weight 1."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


PLAUSIBLE = (st.integers(0, 64).map(str) | st.floats(0, 2).map(repr)
             | st.sampled_from(["4294967295", "1e-3", "1e38", "1e300", "0.999", "1"]))  # mostly accepted
NUMBERS = weighted((3, PLAUSIBLE), (2, st.sampled_from(NUMBER_TEXTS)),
                   (1, st.integers(-2**70, 2**70).map(str) | st.floats().map(repr)
                    | st.floats(allow_nan=False, allow_infinity=False).map(float.hex)),
                   (1, ANY_TEXT))
JUNK = (st.sampled_from(UNKNOWN_TOKENS) | ANY_TEXT).map(lambda token: ([token], None, token))


def option_actions(stage_number: int) -> list[argparse.Action]:
    """The stage's real options, as its main() builds them (argparse keeps them in `_actions`)."""
    stage = load_stage(stage_number)
    parser = build_parser(stage.__file__, stage.__doc__)
    if hasattr(stage, "add_options"):
        stage.add_options(parser)
    return [action for action in parser._actions if action.option_strings]


def values_for(action: argparse.Action) -> st.SearchStrategy[str]:
    if action.choices:
        near_misses = [c.upper() for c in action.choices] + [c + " " for c in action.choices] + ["float16", ""]
        return st.sampled_from(list(action.choices) + near_misses) | ANY_TEXT
    if action.dest == "out":
        return st.sampled_from(OUT_TEXTS)  # never drawn freely: "/" would put records at the root
    if action.dest == "data_dir":
        return st.sampled_from(PATH_TEXTS)  # pinned after the drawn options: parsed, never used
    if action.type is device_name:
        return st.sampled_from(DEVICE_TEXTS) | NUMBERS
    return NUMBERS


@st.composite
def option_uses(draw, actions: list[argparse.Action]) -> tuple[list[str], str | None, str | None]:
    """One option as typed: tokens, the option's full name, and the value given (None: none)."""
    action = draw(st.sampled_from(actions))
    name = max(action.option_strings, key=len)
    spelling = draw(weighted((4, st.sampled_from(action.option_strings)),
                             (1, st.integers(3, len(name)).map(lambda k: name[:k]))))  # argparse's abbreviations
    action = next((a for a in actions if spelling in a.option_strings), action)  # "--data-dir" cut to "--data"
    name = max(action.option_strings, key=len)
    if action.nargs == 0:  # a flag (--verbose, --help), or one given a value it cannot take
        value = draw(st.none() | ANY_TEXT)
        return ([spelling] if value is None else [f"{spelling}={value}"]), name, value
    value = draw(values_for(action))
    form = draw(st.sampled_from(["separate"] * 4 + ["joined", "missing"]))
    tokens = {"separate": [spelling, value], "joined": [f"{spelling}={value}"], "missing": [spelling]}[form]
    return tokens, name, (None if form == "missing" else value)


@st.composite
def command_lines(draw, stage_number: int) -> tuple[list[str], list[tuple]]:
    actions = option_actions(stage_number)
    uses = draw(st.lists(weighted((4, option_uses(actions)), (1, JUNK)), max_size=4))
    return [token for tokens, _, _ in uses for token in tokens], uses


def pinned(stage_number: int, data: Path) -> list[str]:
    """Options after the drawn ones: argparse keeps the last value given."""
    extra = ["--workers", "0"] if takes_option("--workers")(load_stage(stage_number)) else []
    return ["--data", "auto", "--data-dir", str(data), "--max-steps", "2", "--threads", "1", *extra]


def shows_whole(line: str, value: str) -> bool:
    """A value the message quotes is quoted whole (escaped as by printable(), or by repr() as
    argparse does, or as the number it was read as: 1.7976931348623157e+308 for ...e308), or
    its cut is marked with an ellipsis."""
    forms = {printable(value), repr(value)[1:-1]}
    with contextlib.suppress(ValueError):
        forms.add(str(float(value)))
    forms = [shown for shown in forms if len(shown) >= 4]
    starts = [line.find(shown[:12]) for shown in forms if shown[:12] in line]
    return not starts or any(shown in line for shown in forms) or "…" in line[min(starts):]


QUOTED = re.compile(r"""(?:^|(?<=[\s(\[{:,=b]))(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")  # as repr() writes them
BRACKETS = {")": "(", "]": "[", "}": "{"}


def cut_unmarked(line: str) -> bool:
    """True when text in the line was cut off without the ellipsis that one_line() adds: a
    bracket left open outside quoted strings gives it away."""
    if "…" in line:
        return False
    open_brackets = []
    for char in QUOTED.sub("''", line):
        if char in "([{":
            open_brackets.append(char)
        elif char in BRACKETS and (not open_brackets or open_brackets.pop() != BRACKETS[char]):
            return True
    return bool(open_brackets)


def without_values(line: str, uses: list[tuple]) -> str:
    """The line without the values typed that hold brackets, where the line is about them (it names
    their option, or, for a token no option takes, it says "unrecognized arguments"): argparse may
    quote them as they are. Without the parser's own " (see --help)" too: a bare ")" typed for
    another option must not be taken for its closing bracket."""
    line = line.removesuffix(" (see --help)")
    for _, name, value in uses:
        about = "unrecognized arguments" in line if name is None else name in line
        if value and about and any(bracket in value for bracket in "()[]{}"):
            # repr() first: it holds the other; only the first form found, once
            shown = next((form for form in (repr(value), printable(value)) if form in line), None)
            if shown is not None:
                line = line.replace(shown, "", 1)
    return line


def blames_what_was_given(line: str, uses: list[tuple]) -> bool:
    """A refusal names an option that was given, or the token argparse did not know."""
    if "unrecognized arguments" in line or "ambiguous option" in line:
        return True
    return any(name is not None and name in line for _, name, _ in uses)


@pytest.mark.parametrize("stage_number", CLI_STAGES)
# 50: ten times as many, run twice, found nothing the replays below do not hold; 50 found one of
# those in about one run in ten. No deadline: never assert on speed.
@settings(max_examples=50, deadline=None, database=None)
@given(drawn=st.data())
def test_any_command_line_exits_0_2_or_3_with_one_line(stage_number, drawn, fuzz_data):
    argv, uses = drawn.draw(command_lines(stage_number), label="argv")
    with fresh_folder() as folder:
        for file, content in PRECIOUS.items():
            (folder / file).write_bytes(content)
        (folder / "a_folder").mkdir()
        outcome = outcome_of_main(stage_number, argv + pinned(stage_number, fuzz_data))
        event(f"exit {outcome.code}")
        assert_one_line_or_none(outcome)
        written = files_in(folder)
        for file, content in PRECIOUS.items():
            assert written.get(file) == content, f"{file} changed"
        if outcome.code == 2:
            line = outcome.lines[0]
            event(line.split("error: ")[-1].split(":")[0][:40])
            assert no_step_taken(folder), "refused after training began"
            assert blames_what_was_given(line, uses), line
            assert all(shows_whole(line, value) for _, _, value in uses if value), line
            assert not cut_unmarked(without_values(line, uses)), line


# ---------------------------------------------------------------- values each check accepts, at their extremes
@st.composite
def extreme_values(draw, stage_number: int) -> list[str]:
    """Values at the edges of what each option's check accepts, and just past them: what the
    libraries behind the options (numpy's seeding, SGD, DataLoader) must then take too."""
    tiny, huge = st.sampled_from(["5e-324", "1e-300", "1e-38"]), st.sampled_from(["1e38", "3.4e38", "1e300"])
    numbers = {"--lr": tiny | huge | st.floats(1e-6, 10).map(repr),
               "--momentum": st.sampled_from(["0", "-0", "0.999", "1", "3"]) | huge,
               "--seed": st.sampled_from(["0", str(2**32 - 1), "-0", "٣"]),
               "--batch-size": st.sampled_from(["1", "19", "20", "21", str(2**63 - 1), str(2**63), str(2**70)]),
               "--epochs": st.sampled_from(["1", "2", str(2**63), str(10**30)]),
               "--dtype": st.sampled_from(["float32", "float64"])}
    if takes_option("--dropout")(load_stage(stage_number)):
        numbers["--dropout"] = st.sampled_from(["0", "0.5", "0.999999", "5e-324"])
    chosen = draw(st.lists(st.sampled_from(sorted(numbers)), min_size=1, max_size=4, unique=True))
    return [token for option in chosen for token in (option, draw(numbers[option]))]


@pytest.mark.parametrize("stage_number", CLI_STAGES)
@settings(max_examples=15, deadline=None, database=None)  # 150 found nothing more
@given(drawn=st.data())
def test_extreme_values_train_diverge_or_are_refused_in_one_line(stage_number, drawn, fuzz_data):
    argv = drawn.draw(extreme_values(stage_number), label="argv")
    with fresh_folder() as folder:
        outcome = outcome_of_main(stage_number, argv + pinned(stage_number, fuzz_data))
        event(f"exit {outcome.code}")
        assert_one_line_or_none(outcome)
        if outcome.code == 2:
            event(outcome.lines[0].split("error: ")[-1][:50])
            assert no_step_taken(folder), "refused after training began"


# ---------------------------------------------------------------- what the fuzzing found, kept as plain tests
@pytest.mark.parametrize("argv,shown", [
    (["--epochs", "-1\n"], "--epochs: must be at least 1, got -1\\n (see --help)"),
    (["a\nb"], "unrecognized arguments: a\\nb"),
    (["--\x1b[2J"], "unrecognized arguments: --\\x1b[2J"),  # unescaped, it would clear the screen
], ids=["a value", "an unknown argument", "a terminal escape"])
def test_a_control_character_typed_stays_escaped_in_one_line(argv, shown, fuzz_data):
    with fresh_folder():
        outcome = outcome_of_main(NUMPY_STAGE, argv + pinned(NUMPY_STAGE, fuzz_data))
    assert outcome.code == 2 and len(outcome.lines) == 1 and shown in outcome.lines[0], outcome.err


@pytest.mark.parametrize("argv", [["-h=)"], ["--epochs", "0", "-h=)"]], ids=["its own option", "another option"])
def test_a_one_bracket_value_is_not_mistaken_for_a_message_cut_off(argv, fuzz_data):
    """Found in the fuzz test's own checks: argparse quotes the ")" of `-h=)`, and removing every
    bare ")" as well once left the line's "(see --help" open; so did removing it from a line
    about another option."""
    uses = [(["-h=)"], "--help", ")")] + ([(["--epochs", "0"], "--epochs", "0")] if "--epochs" in argv else [])
    with fresh_folder():
        outcome = outcome_of_main(NUMPY_STAGE, argv + pinned(NUMPY_STAGE, fuzz_data))
    assert outcome.code == 2 and len(outcome.lines) == 1, outcome.err
    assert not cut_unmarked(without_values(outcome.lines[0], uses)), outcome.lines[0]


def test_an_event_with_a_lone_surrogate_is_escaped_for_the_statistics(monkeypatch):
    """Found at 500 examples: a refusal quoting a drawn "\\udb96" went into event(), and
    hypothesis's pytest plugin, encoding its statistics as UTF-8, ended the session."""
    import hypothesis

    seen = []
    monkeypatch.setattr(hypothesis, "event", seen.append)
    event("unrecognized arguments: \udb96")
    assert seen == ["unrecognized arguments: \\udb96"] and seen[0].encode("utf-8")


def test_a_number_quoted_as_it_was_read_counts_as_quoted_whole(fuzz_data):
    """Found at 50 examples: --lr 1.7976931348623157e308 is refused as "1.7976931348623157e+308
    does not fit in float32", the number as read, whole."""
    argv, value = ["--lr", "1.7976931348623157e308"], "1.7976931348623157e308"
    with fresh_folder():
        outcome = outcome_of_main(WIDEST_STAGE, argv + pinned(WIDEST_STAGE, fuzz_data))
    assert outcome.code == 2 and "1.7976931348623157e+308 does not fit in float32" in outcome.lines[0], outcome.err
    assert shows_whole(outcome.lines[0], value)


def test_a_momentum_of_1_or_more_is_refused_before_training(fuzz_data):
    """SGD's momentum buffer never decays at 1 or more, so such a run diverges: it is refused."""
    with fresh_folder():
        outcome = outcome_of_main(OPTIM_STAGE, ["--momentum", "1"] + pinned(OPTIM_STAGE, fuzz_data))
    assert outcome.code == 2 and "--momentum: must be at least 0 and below 1, got 1" in outcome.lines[0]


def test_a_batch_size_beyond_what_dataloader_takes_is_refused(fuzz_data):
    """DataLoader's BatchSampler cuts batches with itertools.islice, which takes at most sys.maxsize."""
    with fresh_folder():
        largest = outcome_of_main(WIDEST_STAGE, ["--batch-size", str(sys.maxsize)] + pinned(WIDEST_STAGE, fuzz_data))
        beyond = outcome_of_main(WIDEST_STAGE, ["--batch-size", str(sys.maxsize + 1)] + pinned(WIDEST_STAGE, fuzz_data))
    assert largest.code == 0, largest.err[-500:]
    assert beyond.code == 2 and f"--batch-size: must be at least 1 and at most {sys.maxsize}" in beyond.lines[0]
