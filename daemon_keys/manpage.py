"""A man page (roff, ``man 7 man`` macros) from an ``argparse`` parser. Imports only argparse.

Both commands' pages are built from their own parsers, so a page cannot
describe an option the command does not take: ``scripts/manpages`` writes
``man/*.1``, and a unit test fails when a page names an option the parsers lack,
or misses one they have.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from daemon_keys import __version__

DISTRIBUTION = "certbot-daemon-keys"


def _roff(text: str) -> str:
    """Text safe in a roff body: backslashes escaped, hyphens as minus signs, no line
    that starts with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line without "usage: " and the program's name."""
    usage = re.sub(r"\s+", " ", parser.format_usage().strip().removeprefix("usage: "))
    # "{a,b,c}" is one word to troff, too long for a line once there are enough
    # commands: a space after each comma lets it break there.
    usage = re.sub(r"\{[^}]*\}", lambda m: m.group(0).replace(",", ", "), usage)
    return usage.removeprefix(parser.prog).strip()


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:  # argparse has no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _options(parser: argparse.ArgumentParser, out: list[str],
             shown: frozenset[str] = frozenset()) -> None:
    """An entry per option and positional argument, but those in ``shown``."""
    for action in parser._actions:
        if (isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS
                or shown.intersection(action.option_strings)):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + (
                action.metavar if isinstance(action.metavar, str) else action.dest.upper())
            head = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
            head += f"\\fI{_roff(metavar)}\\fR" if metavar else ""
        else:
            head = f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        out += [".TP", head, _roff(_expand_help(action))]


def _expand_help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": ""}
    return text


def render(parser: argparse.ArgumentParser, summary: str,
           sections: Sequence[tuple[str, str]] = ()) -> str:
    """The man page of ``parser`` (section 1): ``summary`` is the NAME line's, and
    ``(TITLE, text)`` sections follow the commands; a blank line in ``text`` starts a
    new paragraph."""
    prog = parser.prog
    out = [f'.TH "{prog.upper()}" "1" "" "{DISTRIBUTION} {__version__}" "User Commands"',
           ".SH NAME", f"{_roff(prog)} \\- {_roff(summary)}",
           ".SH SYNOPSIS", f"\\fB{_roff(prog)}\\fR {_roff(_usage(parser))}",
           ".SH DESCRIPTION", _roff(parser.description or "")]
    if parser.epilog:
        out += [".PP", _roff(parser.epilog)]
    out += [".SH OPTIONS", "Each option below is accepted before or after the command."]
    _options(parser, out)
    top = frozenset(o for a in parser._actions for o in a.option_strings)
    commands = _subcommands(parser)
    if commands:
        out.append(".SH COMMANDS")
        for name, summary_line, sub in commands:
            out += [".SS " + _roff(name), f"\\fB{_roff(sub.prog)}\\fR {_roff(_usage(sub))}",
                    ".PP", _roff(sub.description or summary_line)]
            _options(sub, out, top)
    for title, text in sections:
        out.append(f".SH {title.upper()}")
        for i, paragraph in enumerate(text.strip().split("\n\n")):
            if i:
                out.append(".PP")
            out.append(_roff(" ".join(paragraph.split())))
    return "\n".join(out) + "\n"
