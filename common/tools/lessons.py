"""The lesson pages, docs/stages/stageNN_<name>.md, read for the site and the notebooks.

A lesson page is a `# Stage N: <title>` line, one paragraph, and the level-2 sections
`## What changes`, `## Why`, `## Try it`, `## Run it`, `## What to look at`, `## Fine print`,
`## Do it yourself` (the exercise: common/tools/exercises/catalog.py reads it), `## Next`. "Try it" holds runnable snippets: a ```python block, then the ```text block of what it
prints (`...` there stands for text that differs from run to run); the tests run every one.
`read_lesson` splits it there (a `##` inside a fenced code block is code, not a heading), so
that the site and the notebooks can put their own parts between the sections: the diff after
"Why", the figure after "What to look at", the exercise before "Next".

Its links are written for the page's own folder (`../running.md`, `stage07_dataloader.md`, the
claim tests' files); `relink` points them from wherever the text is shown instead.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.harness import ROOT

LESSONS_DIR = ROOT / "docs" / "stages"
SECTIONS = ("What changes", "Why", "Try it", "Run it", "What to look at", "Fine print", "Do it yourself", "Next")
SNIPPET = re.compile(r"^```python\n(?P<code>.*?)^```\n(?:(?!```).)*?^```text\n(?P<output>.*?)^```$",
                     re.DOTALL | re.MULTILINE)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# an inline link or image target, `](target)` or `](target "title")`: the text between the brackets
# may hold code but no closing bracket; a target has no spaces (the lesson pages write none)
LINK = re.compile(r"(\]\()(?P<target>[^)\s]+)(?=[)\s])")
INLINE_CODE = re.compile(r"(`+).*?\1", re.DOTALL)


@dataclass
class Lesson:
    path: Path
    title: str  # "Stage 6: a loss module and torch.optim"
    intro: str  # the markdown between the title and the first section
    sections: dict[str, str] = field(default_factory=dict)  # heading -> its markdown, in the page's order


def lesson_path(stem: str, lessons_dir: Path = LESSONS_DIR) -> Path:
    return lessons_dir / f"{stem}.md"


def read_lesson(stem: str, lessons_dir: Path = LESSONS_DIR) -> Lesson | None:
    """The stage's lesson page split at its level-2 headings, or None where it has none (yet)."""
    path = lesson_path(stem, lessons_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    title, parts, fenced = "", {None: []}, None
    for line in text.splitlines():
        is_fence, fenced_after = step_fence(line, fenced)
        prose = fenced is None and not is_fence
        fenced = fenced_after
        if prose and line.startswith("## "):
            parts[line[3:].strip()] = []
        elif prose and line.startswith("# ") and not title and len(parts) == 1:
            title = line[2:].strip()
        else:
            parts[list(parts)[-1]].append(line)
    intro = "\n".join(parts.pop(None)).strip("\n")
    return Lesson(path, title or stem, intro, {name: "\n".join(lines).strip("\n") for name, lines in parts.items()})


def snippets(lesson: Lesson) -> list[tuple[str, str]]:
    """The page's runnable snippets, (code, what it prints), from its "Try it" section."""
    return [(m["code"], m["output"]) for m in SNIPPET.finditer(lesson.sections.get("Try it", ""))]


def relink(markdown: str, lesson: Lesson, target_for: Callable[[Path, str], str | None]) -> str:
    """The markdown with each relative link target passed through target_for(the file it names,
    its #anchor or ""), which returns the new target (None: keep it). Code stays as it is."""
    def replace(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, flags=re.IGNORECASE):  # an address, an anchor, absolute
            return match[0]
        file, _, anchor = target.partition("#")
        new = target_for((lesson.path.parent / file).resolve(), f"#{anchor}" if anchor else "")
        return match[1] + (new if new is not None else target)

    out, fenced = [], None
    for line in markdown.split("\n"):
        is_fence, fenced_after = step_fence(line, fenced)
        out.append(relink_line(line, replace) if fenced is None and not is_fence else line)
        fenced = fenced_after
    return "\n".join(out)


def step_fence(line: str, fenced: str | None) -> tuple[bool, str | None]:
    """Whether the line opens or closes a fenced code block, and the fence open after it
    (CommonMark: a block closes at a fence of its character, at least as long, with no info string)."""
    fence = FENCE.match(line)
    if fence is None:
        return False, fenced
    if fenced is None:
        return True, fence[1]
    if fence[1][0] == fenced[0] and len(fence[1]) >= len(fenced) and line.strip() == fence[1]:
        return True, None
    return False, fenced


def relink_line(line: str, replace: Callable[[re.Match], str]) -> str:
    """LINK replaced outside the line's `code spans`."""
    pieces, last = [], 0
    for code in INLINE_CODE.finditer(line):
        pieces += [LINK.sub(replace, line[last:code.start()]), code[0]]
        last = code.end()
    return "".join(pieces + [LINK.sub(replace, line[last:])])


def relative_to(folder: Path) -> Callable[[Path, str], str]:
    """target_for for text shown from `folder`: the same file, by a path from there."""
    def target_for(file: Path, anchor: str) -> str:
        return Path(os.path.relpath(file, folder.resolve())).as_posix() + anchor
    return target_for
