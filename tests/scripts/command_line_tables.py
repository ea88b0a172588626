"""The option tables of docs/command-line.md, generated from the commands' parsers (`hspnet.cli`):

    python tests/scripts/command_line_tables.py --write     # rewrite the page's tables (from "## `hspnet train`" on)
    python tests/scripts/command_line_tables.py             # print them

tests/test_docs.py checks that the page holds exactly these tables.
"""

import argparse
import sys
from pathlib import Path

from hspnet.cli import COMMANDS, build_parser

PAGE = Path(__file__).resolve().parents[2] / "docs" / "command-line.md"
FIRST = "## `hspnet train`"


def esc(t):
    return " ".join(str(t).split()).replace("|", "\\|")


def spellings(action):
    opts = list(action.option_strings)
    longs = [o for o in opts if o.startswith("--")]
    shorts = [o for o in opts if not o.startswith("--")]
    # canonical: underscore spelling first, then other names, dash spellings omitted (both are always accepted)
    under = [o for o in longs if "-" not in o[2:]]
    rest = [o for o in longs if o not in under and "--" + o[2:].replace("-", "_") not in under]
    return shorts + under + rest


def value(action):
    if action.nargs == 0:
        return ""
    if action.metavar:
        m = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices:
        m = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        m = action.dest.upper()
    if action.nargs == "?":
        m = f"[{m}]"
    elif action.nargs in ("+", "*"):
        m = f"{m} ..."
    return m


def rows(parser):
    fmt = parser._get_formatter()
    out = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
            continue
        if "--debug" in a.option_strings:
            continue
        help_text = esc(fmt._expand_help(a)) if a.help else ""
        for suffix in (f"(default: {a.default!r})", f"(default: {a.default})", "(default: None)"):
            if help_text.endswith(suffix):
                help_text = help_text[: -len(suffix)].rstrip()
        if a.option_strings:
            names = ", ".join(f"`{n}`" for n in spellings(a))
            v = value(a)
            out.append((names, f"`{v}`" if v else "", help_text, a.required, default(a)))
        else:
            out.append((f"`{a.metavar or a.dest}` (positional)", "", help_text, True, ""))
    return out


def default(a):
    d = a.default
    if a.required or d is None or d is argparse.SUPPRESS or a.nargs == 0:
        return ""
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    if isinstance(d, (list, tuple)):
        return "`" + " ".join(map(str, d)) + "`"
    if isinstance(d, dict):
        import json

        return f"`{json.dumps(d)}`"
    return f"`{d}`"


def table(rs):
    lines = ["| option | value | default | meaning |", "|---|---|---|---|"]
    for names, v, h, req, d in rs:
        lines.append(f"| {names}{' (required)' if req and 'positional' not in names else ''} | {v} | {d} | {h} |")
    return "\n".join(lines)


def usage(parser):
    return " ".join(parser.format_usage().split())


def generated() -> str:
    """The tables of every command, from its parser."""
    out = []
    for name in COMMANDS:
        p = build_parser(name)
        p._add_spellings() if hasattr(p, "_add_spellings") else None
        out.append(f"## `hspnet {name}`\n")
        desc = (p.description or COMMANDS[name][1]).strip().split("\n\n")[0]
        out.append(" ".join(desc.split()) + "\n")
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append(table(rows(p)) + "\n")
            continue
        sub = subs[0]
        out.append("`hspnet prepare DATASET [options]`, where DATASET is one of:\n")
        out.append("| dataset | what it reads |\n|---|---|")
        for ca in sub._choices_actions:
            out.append(f"| `{ca.dest}` | {esc(ca.help)} |")
        out.append("")
        per = {}
        for dname, sp in sub.choices.items():
            sp._add_spellings() if hasattr(sp, "_add_spellings") else None
            per[dname] = rows(sp)
        common_keys = None
        for dname, rs in per.items():
            keys = {(r[0], r[2], r[4]) for r in rs}
            common_keys = keys if common_keys is None else common_keys & keys
        first = next(iter(per.values()))
        common = [r for r in first if (r[0], r[2], r[4]) in common_keys]
        out.append(
            "Options of every `hspnet prepare DATASET` (`hspnet prepare DATASET --help` lists them with the "
            "dataset's own):\n"
        )
        out.append(table(common) + "\n")
        for dname, rs in per.items():
            extra = [r for r in rs if (r[0], r[2], r[4]) not in common_keys]
            out.append(f"### `hspnet prepare {dname}`\n")
            if extra:
                out.append(table(extra) + "\n")
            else:
                out.append("Only the options above.\n")
    return "\n".join(out).rstrip() + "\n"


def write() -> None:
    text = PAGE.read_text(encoding="utf-8")
    PAGE.write_text(text[: text.index(FIRST)] + generated(), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(generated(), end="")
