"""README.md, export/README.md and docs/*.md render as written (CommonMark, as
GitHub renders it): every code fence closes where its author closed it, no
heading is swallowed by a code or HTML block, every relative link reaches a
file (and, for a Markdown file, a heading) that exists, and the README links to
every docs page and carries the test command .ci/run runs."""

import glob
import os
import re
import urllib.parse

from markdown_it import MarkdownIt
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def markdown_paths() -> list[str]:
  """README.md, export/README.md and every page under docs/."""
  return [README, os.path.join(REPO, "export", "README.md")] + sorted(
      glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))


def fence_problems(text: str) -> list[str]:
  """What a CommonMark reader would see differently from the author: a
  fence that swallows another fence's opening line (so that what follows
  renders inverted: code as headings, prose as code), or one still open at
  the end of the file."""
  lines = text.splitlines()
  problems = []
  for token in MarkdownIt("commonmark").parse(text):
    if token.type != "fence":
      continue
    start, end = token.map
    for offset, line in enumerate(token.content.splitlines()):
      if line.lstrip().startswith(token.markup[0] * 3):
        problems.append(f"line {start + 2 + offset}: {line.strip()!r} inside "
                        f"the fence opened on line {start + 1}")
    closing = lines[end - 1].strip() if end - 1 > start else ""
    if not closing.startswith(token.markup):
      problems.append(f"line {start + 1}: fence never closed")
  return problems


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ATX_HEADING = re.compile(r"^#{1,6}(\s|$)")


def heading_problems(text: str) -> list[str]:
  """Lines the author wrote as headings (a '#' line outside the fences as a
  plain reader pairs them) that CommonMark does not render as headings: one
  swallowed by a fence the author thought closed (a closing fence shorter
  than its opener) or by an HTML block left open."""
  rendered = {token.map[0] for token in MarkdownIt("commonmark").parse(text)
              if token.type == "heading_open"}
  problems = []
  opener = None
  for number, line in enumerate(text.splitlines()):
    fence = _FENCE.match(line)
    if opener is None:
      if fence:
        opener = fence.group(1)
      elif _ATX_HEADING.match(line) and number not in rendered:
        problems.append(f"line {number + 1}: heading {line.strip()!r} "
                        "does not render as a heading")
    elif fence and fence.group(1)[0] == opener[0] and not fence.group(2).strip():
      # The author's reading: any bare fence of the same character closes,
      # whatever its length (CommonMark needs at least the opener's length).
      opener = None
  return problems


def slug(heading: str) -> str:
  """GitHub's anchor for a heading's text: lower case, punctuation other than
  '-' and '_' dropped, spaces to '-'."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
  """The anchors GitHub gives the headings of a Markdown text (a repeated
  heading gets -1, -2, ...)."""
  tokens = MarkdownIt("commonmark").parse(text)
  seen: dict[str, int] = {}
  for i, token in enumerate(tokens):
    if token.type != "heading_open":
      continue
    base = slug("".join(child.content for child in tokens[i + 1].children))
    count = seen.get(base, 0)
    seen[base] = count + 1
    if count:
      seen[f"{base}-{count}"] = 1
  return set(seen)


def link_problems(path: str, text: str) -> list[str]:
  """Relative links and images of a Markdown file whose target file does not
  exist, or whose #anchor names no heading of the Markdown file it points at.
  Links with a scheme (https:, mailto:) are not followed."""
  problems = []
  for token in MarkdownIt("commonmark").parse(text):
    if token.type != "inline":
      continue
    for child in token.children:
      target = (child.attrGet("href") if child.type == "link_open" else
                child.attrGet("src") if child.type == "image" else None)
      if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
        continue
      where = f"line {token.map[0] + 1}: {target!r}"
      file_part, _, anchor = urllib.parse.unquote(target).partition("#")
      if not file_part:
        if anchor.lower() not in anchors(text):
          problems.append(f"{where}: no heading with that anchor")
        continue
      linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
      if not os.path.exists(linked):
        problems.append(f"{where}: no such file")
      elif anchor and linked.endswith(".md"):
        with open(linked, encoding="utf-8") as f:
          if anchor.lower() not in anchors(f.read()):
            problems.append(f"{where}: no heading with that anchor")
  return problems


class ReadmeTest(tf.test.TestCase):

  def test_fences_balance(self):
    for path in markdown_paths():
      with self.subTest(os.path.relpath(path, REPO)):
        with open(path, encoding="utf-8") as f:
          self.assertEqual(fence_problems(f.read()), [])

  def test_headings_render(self):
    for path in markdown_paths():
      with self.subTest(os.path.relpath(path, REPO)):
        with open(path, encoding="utf-8") as f:
          self.assertEqual(heading_problems(f.read()), [])

  def test_relative_links_resolve(self):
    for path in markdown_paths():
      with self.subTest(os.path.relpath(path, REPO)):
        with open(path, encoding="utf-8") as f:
          self.assertEqual(link_problems(path, f.read()), [])

  def test_readme_links_every_docs_page(self):
    with open(README, encoding="utf-8") as f:
      text = f.read()
    pages = glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)
    self.assertNotEmpty(pages)
    for page in pages:
      relative = os.path.relpath(page, REPO).replace(os.sep, "/")
      self.assertIn(f"]({relative}", text, f"README does not link {relative}")

  def test_readme_carries_the_ci_test_command(self):
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
      command = [line for line in f.read().splitlines()
                 if "pytest" in line and not line.startswith("#")]
    self.assertLen(command, 1)
    fenced = [token.content for token in
              MarkdownIt("commonmark").parse(open(README, encoding="utf-8").read())
              if token.type == "fence"]
    self.assertTrue(any(command[0] in block for block in fenced),
                    f"no README code block holds .ci/run's {command[0]!r}")

  def test_checker_catches_the_broken_shapes(self):
    swallowed = "```text\n| a |\n\n## Next\n\n```sh\nls\n```\n"
    self.assertEqual(fence_problems(swallowed),
                     ["line 6: '```sh' inside the fence opened on line 1"])
    self.assertEqual(fence_problems("# T\n\n```sh\nls\n"),
                     ["line 3: fence never closed"])
    self.assertEqual(fence_problems("```sh\nls\n```\n\n## T\n"), [])
    self.assertEqual(heading_problems("````sh\nls\n```\n\n## T\n"),
                     ["line 5: heading '## T' does not render as a heading"])
    self.assertEqual(heading_problems("<div>\n## Inside\n</div>\n"),
                     ["line 2: heading '## Inside' does not render as a heading"])
    self.assertEqual(heading_problems("```sh\n# a comment\n```\n\n## T\n"), [])

  def test_link_checker(self):
    folder = self.get_temp_dir()
    page = os.path.join(folder, "page.md")
    with open(os.path.join(folder, "other.md"), "w", encoding="utf-8") as f:
      f.write("# Other\n\n## The `--x` flag: why\n")
    text = ("[a](other.md) [b](other.md#the---x-flag-why) [c](missing.md)\n"
            "[d](other.md#nowhere) [e](#local) [f](https://example.com/x.md)\n"
            "[g](#elsewhere)\n\n## Local\n")
    self.assertEqual(link_problems(page, text), [
        "line 1: 'missing.md': no such file",
        "line 1: 'other.md#nowhere': no heading with that anchor",
        "line 1: '#elsewhere': no heading with that anchor"])


if __name__ == "__main__":
  tf.test.main()
