"""README.md, export/README.md and docs/*.md render as written: every code fence closes where
its author closed it (CommonMark, as GitHub renders it)."""

import glob
import os

from markdown_it import MarkdownIt
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class ReadmeTest(tf.test.TestCase):

  def test_fences_balance(self):
    paths = [os.path.join(REPO, "README.md"),
             os.path.join(REPO, "export", "README.md")] + sorted(
        glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
    for path in paths:
      with self.subTest(os.path.relpath(path, REPO)):
        with open(path, encoding="utf-8") as f:
          self.assertEqual(fence_problems(f.read()), [])

  def test_checker_catches_the_broken_shapes(self):
    swallowed = "```text\n| a |\n\n## Next\n\n```sh\nls\n```\n"
    self.assertEqual(fence_problems(swallowed),
                     ["line 6: '```sh' inside the fence opened on line 1"])
    self.assertEqual(fence_problems("# T\n\n```sh\nls\n"),
                     ["line 3: fence never closed"])
    self.assertEqual(fence_problems("```sh\nls\n```\n\n## T\n"), [])


if __name__ == "__main__":
  tf.test.main()
