"""The exercise generator: a stage with its lesson's function bodies blanked, each under a hint."""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from common.errors import CourseError
from common.harness import stage_file
from common.tools.exercises.catalog import ROOT, WORK_DIR, exercise_for, work_file


# ---------------------------------------------------------------- hints from the stage's docstring
def docstring_sentences(doc: str) -> list[str]:
    """The docstring's sentences, each on one line; a sentence never runs past its bullet or paragraph."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n|\n(?=- )", doc):
        text = " ".join(line.strip() for line in paragraph.splitlines()).removeprefix("- ")
        # a sentence ends at . ! or ? and a space, perhaps with a quote or bracket between them
        for piece in re.split(r"(?<=[.!?])\s+|(?<=[.!?][\")])\s+", text):
            if sentences and sentences[-1].endswith(("e.g.", "i.e.", "vs.", "etc.")):  # an abbreviation
                sentences[-1] += " " + piece
            else:
                sentences.append(piece)
    return sentences


def hint_sentence(doc: str, words: str) -> str | None:
    """The first sentence of the docstring that holds `words` (case and line breaks aside)."""
    wanted = " ".join(words.split()).lower()
    return next((s for s in docstring_sentences(doc) if wanted in s.lower()), None)


# ---------------------------------------------------------------- the generator
def function_nodes(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level functions by name, and methods as "Class.method"."""
    nodes = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            nodes[node.name] = node
        elif isinstance(node, ast.ClassDef):
            methods = (item for item in node.body if isinstance(item, ast.FunctionDef))
            nodes.update({f"{node.name}.{method.name}": method for method in methods})
    return nodes


def body_lines(node: ast.FunctionDef, lines: list[str]) -> tuple[int, int]:
    """First and last line (1-based) of the body after the docstring, comments above it included."""
    body = node.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    if has_docstring:
        return body[0].end_lineno + 1, body[-1].end_lineno
    first = body[0].lineno
    while lines[first - 2].strip().startswith("#"):  # a comment above the first line is part of the body
        first -= 1
    return first, body[-1].end_lineno


def blanked_body(name: str, hint: str | None, quoted_by: str | None, indent: str, stage: int) -> list[str]:
    """The lines that replace a body: the hint, then the raise."""
    if quoted_by is not None:
        comment = [f"# Yours to write (the hint above {quoted_by} is about this one too)."]
    elif hint is not None:
        comment = textwrap.wrap(f'Yours to write. From the docstring at the top: "{hint}"', 96 - len(indent),
                                initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
    else:  # the docstring no longer holds the hint's words: point at it
        comment = ["# Yours to write: the docstring at the top says what changed since the stage before."]
    message = f"{name} is yours to write; make check STAGE={stage} checks it"
    return [indent + line + "\n" for line in comment] + [f'{indent}raise NotImplementedError("{message}")\n']


def blank_functions(source: str, stage: int) -> str:
    """The stage's source with the bodies of its exercise's functions replaced by a hint and a raise."""
    exercise = exercise_for(stage)
    tree = ast.parse(source)
    doc = ast.get_docstring(tree) or ""
    lines = source.splitlines(keepends=True)
    nodes = function_nodes(tree)
    quoted: dict[str, str] = {}  # a hint -> the function above which it is quoted
    edits = []
    for name, words in exercise.blanks.items():
        node = nodes[name]
        first, last = body_lines(node, lines)
        hint = hint_sentence(doc, words)
        indent = " " * node.body[-1].col_offset
        edits.append((first, last, blanked_body(name, hint, quoted.get(hint), indent, stage)))
        if hint is not None:
            quoted.setdefault(hint, name)
    for first, last, new in sorted(edits, reverse=True):  # from the bottom, so line numbers stay right
        lines[first - 1:last] = new
    return "".join(lines)


def write_exercise(stage: int, work_dir: Path = WORK_DIR, force: bool = False) -> Path:
    """Write the learner's file; an existing one is left alone unless `force`."""
    path = work_file(stage, work_dir)
    if path.exists() and not force:
        raise CourseError(f"{shown(path)} exists and may hold your work: left as it is "
                          f"(FORCE=1 overwrites it with a fresh exercise)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(blank_functions(stage_file(stage).read_text(), stage))
    return path


def shown(path: Path) -> str:
    """A path as the learner typed it: relative to the course's root where it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
