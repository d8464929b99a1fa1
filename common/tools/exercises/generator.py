"""The exercise generator: a stage with its lesson's function bodies (and lines of main()) blanked,
each under its hint from the catalog."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from common.errors import CourseError
from common.harness import stage_file
from common.tools.exercises.catalog import ROOT, WORK_DIR, Lines, exercise_for, work_file


# ---------------------------------------------------------------- finding what to blank
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


def is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement, "value", None), ast.Constant) \
        and isinstance(statement.value.value, str)


def body_lines(node: ast.FunctionDef, lines: list[str]) -> tuple[int, int]:
    """First and last line (1-based) of the body after the docstring, comments above it included."""
    body = node.body
    if is_docstring(body[0]):
        return body[0].end_lineno + 1, body[-1].end_lineno
    first = body[0].lineno
    while lines[first - 2].strip().startswith("#"):  # a comment above the first line is part of the body
        first -= 1
    return first, body[-1].end_lineno


def blocks(node: ast.AST):
    """Every list of statements inside `node`: its body, and those of its for, with, if and try."""
    for child in ast.walk(node):
        for name in ("body", "orelse", "finalbody"):
            statements = getattr(child, name, None)
            if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
                yield statements


def statements_of(lines: Lines, function: ast.FunctionDef, source: str) -> list[ast.stmt]:
    """The statements `lines` names: from the one holding `first` to the one holding `last`, in one block."""
    for block in blocks(function):
        texts = [ast.get_source_segment(source, s) or "" for s in block]
        starts = [i for i, text in enumerate(texts) if lines.first in text.splitlines()[0]]
        if starts:
            start = starts[0]
            end = next((i for i in range(start, len(block)) if lines.last is None or lines.last in texts[i]), None)
            if end is not None:
                return block[start:end + 1]
    raise CourseError(f"{function.name} has no statements from {lines.first!r} to {lines.last!r}")


# ---------------------------------------------------------------- the blanks
def not_done_message(name: str, stage: int) -> str:
    return f"{name} is yours to write; make check STAGE={stage} checks it"


def blanked_body(name: str, hint: str, indent: str, stage: int) -> list[str]:
    """The lines that replace a body (or the lines of main() a blank names): the hint, then the raise."""
    comment = textwrap.wrap(f"Yours to write. {hint}", 100 - len(indent), initial_indent="# ",
                            subsequent_indent="# ", break_on_hyphens=False, break_long_words=False)
    return [indent + line + "\n" for line in comment] + \
        [f'{indent}raise NotImplementedError("{not_done_message(name, stage)}")\n']


def blanked_lines(source: str, stage: int) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, what replaces them) of every blank of the stage's exercise."""
    exercise = exercise_for(stage)
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    nodes = function_nodes(tree)
    edits = []
    for name, hint in exercise.blanks.items():
        if name in exercise.lines:
            statements = statements_of(exercise.lines[name], nodes[exercise.lines[name].function], source)
            first, last = statements[0].lineno, statements[-1].end_lineno
            indent = " " * statements[0].col_offset
        else:
            node = nodes[name]
            first, last = body_lines(node, lines)
            indent = " " * node.body[-1].col_offset
        edits.append((first, last, blanked_body(name, hint, indent, stage)))
    return edits


def blank_functions(source: str, stage: int) -> str:
    """The stage's source with each blank of its exercise replaced by its hint and a raise."""
    lines = source.splitlines(keepends=True)
    for first, last, new in sorted(blanked_lines(source, stage), reverse=True):  # from the bottom up
        lines[first - 1:last] = new
    return "".join(lines)


def write_exercise(stage: int, work_dir: Path = WORK_DIR, force: bool = False) -> Path:
    """Write the learner's file; an existing one is left alone unless `force`."""
    path = work_file(stage, work_dir)
    if path.exists() and not force:
        raise CourseError(f"{shown(path)} exists and may hold your work: left as it is "
                          f"(FORCE=1 overwrites it with a fresh exercise)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(blank_functions(stage_file(stage).read_text(), stage))
    except OSError as err:
        raise CourseError(f"cannot write {shown(path)}: {err.strerror}") from None
    return path


def shown(path: Path) -> str:
    """A path as the learner typed it: relative to the course's root where it is inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
