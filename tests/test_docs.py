"""The manual (docs/, MkDocs) builds strictly: a broken link, a missing anchor or a page left out
of the nav fails the suite. README.md's links into docs/ point at pages that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from .helpers import ROOT


def build(root, site) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(site)], cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)


def test_manual_builds_strictly(tmp_path):
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "commands" / "extract" / "index.html").is_file()


@pytest.mark.parametrize("fault", ["broken link", "page not in nav"])
def test_strict_build_fails_on_a_fault(tmp_path, fault):
    copy = tmp_path / "project"
    shutil.copytree(os.path.join(ROOT, "docs"), copy / "docs")
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), copy / "mkdocs.yml")
    if fault == "broken link":
        with open(copy / "docs" / "commands" / "fit.md", "a") as handle:
            handle.write("\nSee [a page that does not exist](nowhere.md).\n")
    else:
        (copy / "docs" / "commands" / "orphan.md").write_text("# Nobody links here\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0, f"the strict build accepted a {fault}"
    assert ("nowhere.md" if fault == "broken link" else "orphan.md") in done.stderr


def test_readme_links_into_docs_exist():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) > 20   # the manual is linked page by page
    missing = [link for link in links if not os.path.isfile(os.path.join(ROOT, link))]
    assert not missing, missing
