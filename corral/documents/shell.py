"""Injection-safe ``{{ name }}`` substitution into POSIX shell script text.

Rules, in the order the scanner applies them:

* A parameter with ``interpolationType: ENV_VAR`` is never pasted into the script.
  Its ``{{ name }}`` becomes a reference to the environment variable ``SSM_name``,
  written to suit where it stands, so that the shell always sees one literal word:
  unquoted → ``"${SSM_name}"``; inside double quotes or an expanding here-document →
  ``${SSM_name}``; inside single quotes → ``'"${SSM_name}"'`` (close, insert, reopen);
  inside ``$'...'`` → ``'"${SSM_name}"$'``. Inside a comment or a quoted
  here-document (``<<'EOF'``) the text ``${SSM_name}`` is left as is: nothing runs there.
* Every other parameter is pasted as text, exactly as Systems Manager does; such
  values are the document author's responsibility (``allowedPattern``).
* Quoting state is tracked over the document's own text only, never over pasted
  values, so a value cannot change how a later ENV_VAR reference is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from corral.documents.references import PARAMETER_REFERENCE

_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]+)'|\"([^\"\n]+)\"|\\?([A-Za-z0-9_]+))")
_WORD_BREAK = frozenset(" \t\n;&|()<>")


class _Context(Enum):
    COMMAND = "command"  # unquoted: top level, inside $( ) or backticks
    DOUBLE = "double"
    SINGLE = "single"
    ANSI = "ansi"
    COMMENT = "comment"


@dataclass
class _Frame:
    context: _Context
    closer: str = ""  # ")" for $( ), "`" for backticks, "" for the top level
    depth: int = 0


@dataclass
class _Heredoc:
    delimiter: str
    strip_tabs: bool


@dataclass
class _Scanner:
    text: str
    pasted: Mapping[str, str]
    env_names: Mapping[str, str]
    out: list[str] = field(default_factory=list)
    stack: list[_Frame] = field(default_factory=lambda: [_Frame(_Context.COMMAND)])
    pending: list[_Heredoc] = field(default_factory=list)
    pos: int = 0

    def run(self) -> str:
        while self.pos < len(self.text):
            if self._placeholder():
                continue
            self._step()
        return "".join(self.out)

    def _emit(self, chunk: str) -> None:
        self.out.append(chunk)
        self.pos += len(chunk)

    def _placeholder(self) -> bool:
        match = PARAMETER_REFERENCE.match(self.text, self.pos)
        if match is None:
            return False
        name = match.group(1)
        if name in self.env_names:
            self.out.append(self._env_reference(self.env_names[name]))
        else:
            self.out.append(self.pasted.get(name, match.group(0)))
        self.pos = match.end()
        return True

    def _env_reference(self, variable: str) -> str:
        context = self.stack[-1].context
        if context is _Context.COMMAND:
            return f'"${{{variable}}}"'
        if context is _Context.SINGLE:
            return f"'\"${{{variable}}}\"'"
        if context is _Context.ANSI:
            return f"'\"${{{variable}}}\"$'"
        return f"${{{variable}}}"

    def _step(self) -> None:
        frame = self.stack[-1]
        char = self.text[self.pos]
        if frame.context is _Context.SINGLE:
            self._emit(char)
            if char == "'":
                self.stack.pop()
        elif frame.context is _Context.COMMENT:
            if char == "\n":
                self.stack.pop()
                self._newline()
            else:
                self._emit(char)
        elif frame.context in (_Context.DOUBLE, _Context.ANSI):
            self._quoted(frame, char)
        else:
            self._command(frame, char)

    def _quoted(self, frame: _Frame, char: str) -> None:
        if char == "\\":
            self._emit(self.text[self.pos : self.pos + 2])
        elif frame.context is _Context.ANSI:
            self._emit(char)
            if char == "'":
                self.stack.pop()
        elif char == '"':
            self._emit(char)
            self.stack.pop()
        else:
            self._substitution_or(char)

    def _substitution_or(self, char: str) -> None:
        if self.text.startswith("$(", self.pos):
            self._emit("$(")
            self.stack.append(_Frame(_Context.COMMAND, closer=")"))
        elif char == "`":
            self._emit(char)
            self.stack.append(_Frame(_Context.COMMAND, closer="`"))
        else:
            self._emit(char)

    def _command(self, frame: _Frame, char: str) -> None:
        at_word_start = self.pos == 0 or self.text[self.pos - 1] in _WORD_BREAK
        if char == "\\":
            self._emit(self.text[self.pos : self.pos + 2])
        elif char == "'":
            self._emit(char)
            self.stack.append(_Frame(_Context.SINGLE))
        elif char == '"':
            self._emit(char)
            self.stack.append(_Frame(_Context.DOUBLE))
        elif self.text.startswith("$'", self.pos):
            self._emit("$'")
            self.stack.append(_Frame(_Context.ANSI))
        elif char == "#" and at_word_start:
            self.stack.append(_Frame(_Context.COMMENT))
            self._emit(char)
        elif char == "\n":
            self._newline()
        elif char == "<" and self._heredoc_start():
            return
        elif char == frame.closer and (char == "`" or frame.depth == 0):
            self._emit(char)
            self.stack.pop()
        elif char == "(" and frame.closer == ")":
            frame.depth += 1
            self._emit(char)
        elif char == ")" and frame.closer == ")":
            frame.depth -= 1
            self._emit(char)
        else:
            self._substitution_or(char)

    def _heredoc_start(self) -> bool:
        if self.text.startswith("<<<", self.pos):
            self._emit("<<<")
            return True
        match = _HEREDOC.match(self.text, self.pos)
        if match is None:
            return False
        delimiter = match.group(2) or match.group(3) or match.group(4)
        self.pending.append(_Heredoc(delimiter, strip_tabs=bool(match.group(1))))
        self._emit(match.group(0))
        return True

    def _newline(self) -> None:
        self._emit("\n")
        while self.pending:
            self._heredoc_body(self.pending.pop(0))

    def _heredoc_body(self, heredoc: _Heredoc) -> None:
        while self.pos < len(self.text):
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end == -1 else end + 1
            line = self.text[self.pos : end]
            check = line.rstrip("\n").lstrip("\t") if heredoc.strip_tabs else line.rstrip("\n")
            if check == heredoc.delimiter:
                self._emit(line)
                return
            self._heredoc_line(line)

    def _heredoc_line(self, line: str) -> None:
        stop = self.pos + len(line)
        while self.pos < stop:
            match = PARAMETER_REFERENCE.match(self.text, self.pos)
            if match is not None and match.end() <= stop:
                name = match.group(1)
                if name in self.env_names:
                    self.out.append(f"${{{self.env_names[name]}}}")
                else:
                    self.out.append(self.pasted.get(name, match.group(0)))
                self.pos = match.end()
            else:
                self._emit(self.text[self.pos])


def substitute(template: str, pasted: Mapping[str, str], env_names: Mapping[str, str]) -> str:
    """Paste ``pasted`` values into ``template``; make ``env_names`` refs safe variable refs."""
    return _Scanner(template, pasted, env_names).run()
