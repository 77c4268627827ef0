r"""MkDocs hook: a pipe inside a table cell is written `\|` in docs/ (GitHub's tables need the
escape); Python-Markdown's tables keep pipes inside code spans without it and would show the
backslash, so table rows get the plain pipe before they are rendered."""

import re

_ROW = re.compile(r"^\|.*$", re.MULTILINE)


def on_page_markdown(markdown, **kwargs):
    return _ROW.sub(lambda row: row.group(0).replace("\\|", "|"), markdown)
