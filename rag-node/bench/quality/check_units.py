#!/usr/bin/env python3
"""Validate a Debian Reference quality-benchmark file against its HTML corpus.

Parses the chapter HTML files of one language (stdlib html.parser only),
splits them into judged units and checks that every unit id referenced by
the questions of the JSON file exists (and has text).

Unit rule (see README.md):
  * headings are <h1|h2|h3|h4 class="title"> whose text starts with a
    section number "2.", "2.1.", "2.1.3.", "A.1." ...  (DocBook output);
  * a unit is a numbered section at depth 2 ("2.1"), including all its
    sub-sections, EXCEPT in the chapters listed in "depth3_chapters" of the
    JSON file: there every depth-3 section ("9.3.2") is a unit (with its
    depth-4 sub-sections), and the lead text of a depth-2 section that comes
    before its first depth-3 sub-section is a unit of its own, with the
    depth-2 id ("9.3"), if it contains any text;
  * the preface (pr01.*.html, numbered "1.", "3.1." that would collide with
    the chapters) and index.*.html are not part of the corpus;
  * chapter lead text (before the first x.y heading) belongs to no unit.
  * navigation header/footer, the chapter table of contents and footnotes
    are ignored.

Usage:
  check_units.py debian-reference-pt.json            # validate, list units
  check_units.py debian-reference-pt.json --quiet    # validate, counts only
  check_units.py debian-reference-pt.json --dump 2.1 # print a unit's text
"""
import glob
import json
import os
import re
import sys
from html.parser import HTMLParser

HEADING_TAGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5}
SKIP_DIV_CLASSES = {"navheader", "navfooter", "toc", "footnotes"}
NUM_RE = re.compile(r"^\s*(?:(?:Chapter|Capítulo|Appendix|Apêndice)\s+)?"
                    r"((?:[0-9]+|[A-Z])(?:\.[0-9]+)*)\.\s+(.*)$", re.S)


class ChapterParser(HTMLParser):
    """Collects (level, number, title) headings and the text after each."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.items = []          # list of dicts: level, num, title, text[]
        self.div_stack = []      # True for a div that is skipped
        self.skip_depth = 0
        self.in_heading = None   # heading level while inside a title heading
        self.heading_buf = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            skip = bool(set((a.get("class") or "").split()) & SKIP_DIV_CLASSES)
            self.div_stack.append(skip)
            if skip:
                self.skip_depth += 1
        elif tag in ("script", "style"):
            self.in_script = True
        elif (tag in HEADING_TAGS and "title" in (a.get("class") or "").split()
              and not self.skip_depth):
            self.in_heading = HEADING_TAGS[tag]
            self.heading_buf = []
        elif tag in ("p", "li", "tr", "br", "pre", "dt", "dd") and self.items:
            self.items[-1]["text"].append("\n")
        elif tag in ("td", "th") and self.items:
            self.items[-1]["text"].append(" | ")

    def handle_endtag(self, tag):
        if tag == "div":
            if self.div_stack and self.div_stack.pop():
                self.skip_depth -= 1
        elif tag in ("script", "style"):
            self.in_script = False
        elif tag in HEADING_TAGS and self.in_heading == HEADING_TAGS[tag]:
            raw = re.sub(r"\s+", " ", "".join(self.heading_buf).replace("\xa0", " ")).strip()
            m = NUM_RE.match(raw)
            num, title = (m.group(1), m.group(2)) if m else (None, raw)
            self.items.append({"level": self.in_heading, "num": num,
                               "title": title, "raw": raw, "text": []})
            self.in_heading = None

    def handle_data(self, data):
        if self.skip_depth or self.in_script:
            return
        if self.in_heading is not None:
            self.heading_buf.append(data)
        elif self.items:
            self.items[-1]["text"].append(data)


def clean(parts):
    t = "".join(parts).replace("\xa0", " ")
    t = re.sub(r"[ \t]+", " ", t)
    t = re.sub(r"\s*\n\s*", "\n", t)
    return t.strip()


def chapter_files(html_dir, lang):
    files = sorted(glob.glob(os.path.join(html_dir, f"ch[0-9][0-9].{lang}.html")))
    files += sorted(glob.glob(os.path.join(html_dir, f"ap[a-z].{lang}.html")))
    return files


def parse_sections(html_dir, lang):
    """All numbered headings in document order: (num, depth, title, own_text, file)."""
    out = []
    for f in chapter_files(html_dir, lang):
        p = ChapterParser()
        with open(f, encoding="utf-8") as fh:
            p.feed(fh.read())
        p.close()
        for it in p.items:
            if it["num"] is None:
                continue
            depth = it["num"].count(".") + 1
            out.append((it["num"], depth, it["title"], clean(it["text"]),
                        os.path.basename(f)))
    return out


def build_units(sections, depth3_chapters=()):
    """Return ordered dict unit_id -> {title, text, file}."""
    depth3 = set(str(c) for c in depth3_chapters)
    units = {}
    for num, depth, title, text, fname in sections:
        chap = num.split(".")[0]
        udepth = 3 if chap in depth3 else 2
        if depth == 1:
            continue
        if depth <= udepth:
            uid = num
            units[uid] = {"title": title, "text": [text] if text else [], "file": fname,
                          "heading": num}
        else:
            uid = ".".join(num.split(".")[:udepth])
            if uid not in units:   # should not happen with DocBook numbering
                units[uid] = {"title": "?", "text": [], "file": fname, "heading": uid}
            units[uid]["text"].append(f"{num}. {title}\n{text}")
    for u in units.values():
        u["text"] = "\n".join(u["text"]).strip()
    return units


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    path = argv[1]
    quiet = "--quiet" in argv
    with open(path, encoding="utf-8") as fh:
        bench = json.load(fh)
    html_dir = bench["html_dir"]
    lang = bench["language"]
    sections = parse_sections(html_dir, lang)
    units = build_units(sections, bench.get("depth3_chapters", []))
    with_text = {k: v for k, v in units.items() if v["text"]}

    if "--dump" in argv:
        for uid in argv[argv.index("--dump") + 1:]:
            u = units.get(uid)
            print(f"===== {uid} {u['title'] if u else '(missing)'}")
            if u:
                print(u["text"])
        return 0

    if not quiet:
        for uid, u in units.items():
            mark = "" if u["text"] else "   (NO TEXT)"
            print(f"{uid:8} {len(u['text']):6d} chars  {u['title']}{mark}")
    print(f"{bench['corpus']}: {len(sections)} numbered headings, "
          f"{len(units)} units, {len(with_text)} units with text "
          f"(json says units={bench.get('units')})")

    errors = []
    if bench.get("units") != len(with_text):
        errors.append(f"json 'units' = {bench.get('units')} but found {len(with_text)}")
    ids = set()
    kinds, splits = {}, {}
    for q in bench["questions"]:
        if q["id"] in ids:
            errors.append(f"duplicate question id {q['id']}")
        ids.add(q["id"])
        kinds[q["kind"]] = kinds.get(q["kind"], 0) + 1
        splits[(q["split"], q["kind"])] = splits.get((q["split"], q["kind"]), 0) + 1
        if q["kind"] not in ("paraphrase", "exact", "situation"):
            errors.append(f"{q['id']}: bad kind {q['kind']}")
        if q["split"] not in ("tune", "heldout"):
            errors.append(f"{q['id']}: bad split {q['split']}")
        if not q["units"]:
            errors.append(f"{q['id']}: no judged units")
        for uid in q["units"]:
            if uid not in with_text:
                errors.append(f"{q['id']}: unit {uid!r} not found (or has no text)")
    print(f"{len(bench['questions'])} questions; kinds {kinds}; "
          f"split x kind {dict(sorted(splits.items()))}")
    if errors:
        for e in errors:
            print("ERROR:", e)
        return 1
    print("OK: all judged unit ids exist")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
