"""Which functions (and which lines of main()) each exercise blanks, why those, and the hint over
each: read from each stage's lesson page, its section "## Do it yourself"."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import CourseError
from common.harness import ROOT, stage_file, stage_files
from common.tools.lessons import read_lesson

WORK_DIR = ROOT / "work"  # the learner's exercises


# ---------------------------------------------------------------- which functions each exercise blanks
@dataclass(frozen=True)
class Lines:
    """Statements of a function (main) rather than a whole body: from the statement whose source
    holds `first` to the one that holds `last` (the same statement when `last` is None), in one block."""
    function: str
    first: str
    last: str | None = None


@dataclass(frozen=True)
class Exercise:
    # a function (or Class.method), or a name of `lines` -> its hint: what it must do, and what the check tests
    blanks: dict[str, str]
    why: str  # why these: where the lesson of the diff from the stage before lives
    lines: dict[str, Lines] = field(default_factory=dict)  # the blanks that are lines of main()

    def function_of(self, name: str) -> str:
        """The function a blank lies in: itself, or for lines of main(), "main"."""
        return self.lines[name].function if name in self.lines else name


BLANK = re.compile(r"`(?P<name>[^`]+)`(?: \(the lines? of `(?P<function>\w+)\(\)` (?:from|with) `(?P<first>[^`]+)`"
                   r"(?: to `(?P<last>[^`]+)`)?\))?: (?P<hint>.+)")


def exercise_of(section: str) -> Exercise:
    """The exercise a lesson page's "## Do it yourself" section describes: a bullet per blank,
    "- `name`: hint", where a blank of main()'s lines says which ("- `main: the wrap` (the lines
    of `main()` from `first` to `last`): hint"), then a paragraph "Why these: ...". Markdown's
    escapes (`\\_`, `\\*`) are taken out of the text."""
    blanks, lines, why = {}, {}, ""
    for block in section.split("\n\n"):
        for item in re.split(r"\n(?=- )", block.strip()):
            text = re.sub(r"\\([\\_*])", r"\1", " ".join(item.split()))
            blank = BLANK.fullmatch(text[2:]) if text.startswith("- `") else None
            if blank is not None:
                blanks[blank["name"]] = blank["hint"]
                if blank["function"]:
                    lines[blank["name"]] = Lines(blank["function"], blank["first"], blank["last"])
            elif text.startswith("Why these: "):
                why = text.removeprefix("Why these: ")
    return Exercise(blanks, why, lines)


def exercises() -> dict[int, Exercise]:
    """Each stage's exercise, from its lesson page: the one place a stage's exercise is written."""
    found = {}
    for path in stage_files():
        lesson = read_lesson(path.stem)
        if lesson is not None and "Do it yourself" in lesson.sections:
            found[int(path.stem[5:7])] = exercise_of(lesson.sections["Do it yourself"])
    return found


EXERCISES = exercises()


def exercise_for(stage: int) -> Exercise:
    if stage not in EXERCISES:
        raise CourseError(f"no stage {stage}: stages are 1 to {len(stage_files())}")
    return EXERCISES[stage]


def work_file(stage: int, work_dir: Path = WORK_DIR) -> Path:
    """The learner's copy: work/stage03_autograd.py for stage 3."""
    return work_dir / stage_file(stage).name
