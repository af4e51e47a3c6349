"""HTML mail → readable plain text, with the standard library's parser.

Only for mails without a text/plain part. Paragraphs and line breaks are kept, lists get
``-`` bullets, links keep their target, ``<blockquote>`` becomes ``>``-quoted lines (so the
quote stripper treats HTML and plain replies alike), hidden preheaders and styles are dropped.
"""

from __future__ import annotations

import contextlib
import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_VOID = {
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
}  # fmt: skip
_SKIP = {"script", "style", "head", "title", "template", "svg", "object", "xml"}
_BLOCK = {
    "address", "article", "aside", "center", "dd", "div", "dl", "dt", "fieldset", "figure",
    "footer", "form", "header", "main", "nav", "section", "table", "tbody", "thead", "tfoot",
    "tr", "ul", "ol", "li",
}  # fmt: skip
_PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr"}
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all", re.I)
# Quote marks shown at most per line: deeper quotes look the same, and a hostile mail of nested
# unclosed <blockquote>s would otherwise grow by the square of its length.
_MAX_QUOTE_MARKS = 8
_SPACE = re.compile(r"[ \t\r\n\f\v\xa0\u200b\u200c\u200d\ufeff]+")


class _Converter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[int, str]] = []
        self.cur: list[str] = []
        self.cur_depth = 0
        self.depth = 0
        self.stack: list[tuple[str, bool, str | None]] = []  # tag, hidden, link
        self.open_tags: dict[str, int] = {}  # tag → how many of it the stack holds
        self.hidden = 0
        self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [counter] (-1 for bullets)
        self.link: str | None = None
        self.link_text: list[str] = []

    # -- line handling -----------------------------------------------------------------------
    def _flush(self) -> None:
        text = "".join(self.cur)
        if text.strip():
            self.lines.append((self.cur_depth, text.strip() if not self.pre else text.rstrip()))
        self.cur = []

    def _break(self, blank: bool = False) -> None:
        self._flush()
        if not blank or not self.lines:
            return
        depth, text = self.lines[-1]
        if text:
            self.lines.append((self.depth, ""))
        elif depth > self.depth:
            self.lines[-1] = (self.depth, "")

    def _text(self, text: str) -> None:
        if not text:
            return
        if not self.cur or not "".join(self.cur).strip():
            self.cur_depth = self.depth
        self.cur.append(text)
        if self.link is not None:
            self.link_text.append(text)

    # -- parser callbacks --------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k.lower(): v or "" for k, v in attrs}
        hidden = bool(_HIDDEN.search(attr.get("style", ""))) or "hidden" in attr
        if tag in _VOID:
            if self.hidden:
                return
            if tag == "br":
                if "".join(self.cur).strip():
                    self._flush()
                else:
                    self.cur = []
                    self.lines.append((self.depth, ""))
            elif tag == "hr":
                self._break(blank=True)
            elif tag == "img" and not hidden:
                alt = " ".join(attr.get("alt", "").split())
                if alt:
                    self._text(f"[{alt}]")
            return
        self.stack.append((tag, hidden, None))
        self.open_tags[tag] = self.open_tags.get(tag, 0) + 1
        if tag in _SKIP or hidden:
            self.hidden += 1
            return
        if self.hidden:
            return
        if tag in _PARAGRAPH:
            self._break(blank=True)
        elif tag in _BLOCK:
            self._break()
        if tag == "blockquote":
            self.depth += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in {"ul", "ol"}:
            self.lists.append([0 if tag == "ol" else -1])
        elif tag == "li":
            counter = self.lists[-1] if self.lists else [-1]
            if counter[0] >= 0:
                counter[0] += 1
                self._text(f"{counter[0]}. ")
            else:
                self._text("- ")
        elif tag in {"td", "th"}:
            if "".join(self.cur).strip():
                self._text("  ")
        elif tag == "a":
            href = attr.get("href", "").strip()
            if href.lower().startswith(("http://", "https://", "mailto:")):
                self.link = href
                self.link_text = []
                self.stack[-1] = (tag, hidden, href)

    def handle_endtag(self, tag: str) -> None:
        if not self.open_tags.get(tag):  # a stray end tag (asked without walking the stack)
            return
        while self.stack:
            open_tag, hidden, link = self.stack.pop()
            self.open_tags[open_tag] -= 1
            self._close(open_tag, hidden, link)
            if open_tag == tag:
                break

    def _close(self, tag: str, hidden: bool, link: str | None) -> None:
        if tag in _SKIP or hidden:
            self.hidden -= 1
            return
        if self.hidden:
            return
        if link is not None:
            shown = " ".join("".join(self.link_text).split())
            target = link[7:] if link.lower().startswith("mailto:") else link
            if target and target.rstrip("/") != shown.rstrip("/") and target not in shown:
                self._text(f" ({target})" if shown else target)
            self.link = None
        if tag == "blockquote":
            self._flush()
            self.depth = max(0, self.depth - 1)
            self._break(blank=True)
        elif tag == "pre":
            self._break(blank=True)
            self.pre = max(0, self.pre - 1)
        elif tag in {"ul", "ol"}:
            if self.lists:
                self.lists.pop()
            self._break()
        elif tag in _PARAGRAPH:
            self._break(blank=True)
        elif tag in _BLOCK:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if self.pre:
            for i, chunk in enumerate(data.split("\n")):
                if i:
                    self._flush()
                self._text(chunk)
            return
        text = _SPACE.sub(" ", data)
        if not "".join(self.cur).strip():
            text = text.lstrip()
        elif self.cur and self.cur[-1].endswith(" ") and text.startswith(" "):
            text = text[1:]
        self._text(text)

    def result(self) -> str:
        while self.stack:
            tag, hidden, link = self.stack.pop()
            self._close(tag, hidden, link)
        self._flush()
        out: list[str] = []
        for depth, text in self.lines:
            marks = ">" * min(depth, _MAX_QUOTE_MARKS)
            line = (marks + (" " if text else "")) + text if depth else text
            if line == "" and out and out[-1] == "":
                continue
            out.append(line)
        return "\n".join(out).strip("\n")


def html_to_text(html: str) -> str:
    """Readable text of an HTML document or fragment; never raises on bad markup."""
    parser = _Converter()
    # A broken mail must still yield what text it has.
    with contextlib.suppress(Exception):
        parser.feed(html)
        parser.close()
    return parser.result()
