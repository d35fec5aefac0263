#!/usr/bin/env python3
"""Open Library dump file -> neo4j-admin import CSVs of the graph `bookworm import` builds.

    scripts/dump-to-csv.py DUMP_FILE OUT_DIR [--crawl-id ID] [--max-subjects N]

DUMP_FILE is a dump (gzipped or not): one record a line, `type \t key \t revision \t
last_modified \t JSON`. OUT_DIR gets one node file per label, one relationship file per
type, `import.args` (the `--nodes=` / `--relationships=` / `--multiline-fields=` arguments of
`neo4j-admin database import full`, one a line) and `summary.json` (the counts, also printed
on stdout).

The graph is the one `bookworm import` + the graph writer leave in a fresh Neo4j (see
src/import/mod.rs, src/crawl/parse.rs, src/graph/cypher.rs and rows.rs), line for line:
- each work, author and edition line is read as the record parser reads it: the JSON's
  `type` decides the kind, the key's prefix must agree with it and with the key column,
  each field is kept only when it has the expected shape (text fields plain or
  `{"value": ...}`), `revision` from the JSON or else the column; /type/redirect and
  /type/delete lines give nothing (the import publishes nothing for them, and writes no
  tombstone), and lines the importer would dead-letter are counted and skipped;
- node properties: the contract's table (title, subtitle, first_publish_date, description,
  covers / name, personal_name, birth_date, death_date, bio / title, publish_date,
  publishers, isbn_10, isbn_13, number_of_pages), `revision`, `last_modified`, and the
  writer's own `stub` (false), `crawls` ([crawl id]), `crawl_count` (1), `updated_at`
  (one timestamp for the whole conversion; the writer uses each transaction's clock).
  Empty strings and empty lists are left out, as the writer leaves them out;
- relationships, from the record: work -WRITTEN_BY-> author (`authors[].author.key`), work
  -ABOUT-> subject (its first MAX_SUBJECTS_PER_NODE=10 distinct subject keys), edition
  -EDITION_OF-> work (`works[].key`), edition -WRITTEN_BY-> author (`authors[].key`); an
  edition's subjects are not linked (Entity::outgoing). Each carries `revision` (the
  record's), `crawls`, `crawl_count`, `updated_at`;
- a Subject node per distinct subject key (`/subjects/<name>`, Open Library's str_to_key as
  parse::subject_key does it), `name` the first spelling met (trimmed);
- an end of a relationship that has no record line in the file becomes a stub (`stub: true`,
  only `key`, `crawls`, `crawl_count`, `updated_at`), its label from the key's prefix, as the
  writer's merge_ends creates it. Stubs are found with an external `sort -u` / `comm`, so
  memory stays bounded whatever the dump's size (only the subject keys are held).

All nodes share neo4j-admin's default ID space keyed by `key` (keys are unique across
labels: the prefix names the label). Array values use U+001F as the array delimiter
(pass --array-delimiter=U+001F); a U+001F inside an array element becomes a space. Node
rows with a line break in a value go to a separate `*-ml.csv` file listed in
`--multiline-fields` (format v2) so the other files keep the fast parser.
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

KNOWN_TYPES = {"/type/work", "/type/author", "/type/edition", "/type/redirect", "/type/delete"}
PREFIX_LABEL = (("/works/", "Work"), ("/authors/", "Author"), ("/books/", "Edition"),
                ("/subjects/", "Subject"))
MAX_KEY_BYTES = 2048  # graph::rows::MAX_KEY_BYTES: longer keys are refused by the writer
I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1
ARRAY_DELIM = "\x1f"

# Rust's char::is_whitespace (Unicode White_Space), which str::trim and subject_key use;
# Python's str.isspace() also counts U+001C..U+001F, which Rust does not.
RUST_WS = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
RUST_WS_STR = "".join(RUST_WS)
SUBJECT_DROPPED = set(";/?:@&=+$,<>#%\"{}|\\^[]`\n\r")

# Per label: (file stem, [(property, neo4j type, reader)]) in column order.
STR, TEXT, INT, STRS, INTS = "string", "text", "int", "strings", "ints"
SCHEMA = {
    "Work": ("works", [("title", STR), ("subtitle", STR), ("first_publish_date", STR),
                       ("description", TEXT), ("covers", INTS)]),
    "Author": ("authors", [("name", STR), ("personal_name", STR), ("birth_date", STR),
                           ("death_date", STR), ("bio", TEXT)]),
    "Edition": ("editions", [("title", STR), ("publish_date", STR), ("publishers", STRS),
                             ("isbn_10", STRS), ("isbn_13", STRS), ("number_of_pages", INT)]),
}
CSV_TYPE = {STR: "", TEXT: "", INT: ":long", STRS: ":string[]", INTS: ":long[]"}
COMMON_NODE = "revision:long,last_modified,stub:boolean,crawls:string[],crawl_count:long,updated_at:datetime"
REL_HEADER = ":START_ID,:END_ID,revision:long,crawls:string[],crawl_count:long,updated_at:datetime"
RELS = ("WRITTEN_BY", "EDITION_OF", "ABOUT")


class Skip(Exception):
    """A line the importer would dead-letter (reason `parse`)."""


def label_of_key(key):
    for prefix, label in PREFIX_LABEL:
        if key.startswith(prefix):
            return label
    return None


def valid_key(key):
    """graph::rows::check_key: a known prefix, an id after it, at most MAX_KEY_BYTES."""
    return (len(key.encode()) <= MAX_KEY_BYTES and label_of_key(key) is not None
            and key.rsplit("/", 1)[-1] != "")


def rust_trim(s):
    return s.strip(RUST_WS_STR)


def subject_key(subject):
    """crawl::parse::subject_key."""
    out = []
    for c in rust_trim(subject).lower():
        if c in SUBJECT_DROPPED:
            continue
        if c in RUST_WS:
            out.append("_")
        elif (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f):  # Cc, not whitespace
            continue
        else:
            out.append(c)
    return "/subjects/" + "".join(out) if out else None


def is_i64(v):
    return type(v) is int and I64_MIN <= v <= I64_MAX


# Field readers (crawl::parse::fields::Fields): None when absent, null or of the wrong shape.
def f_string(rec, name):
    v = rec.get(name)
    return v if type(v) is str else None


def f_text(rec, name):
    v = rec.get(name)
    if type(v) is str:
        return v
    if type(v) is dict and type(v.get("value")) is str:
        return v["value"]
    return None


def f_integer(rec, name):
    v = rec.get(name)
    return v if is_i64(v) else None


def f_list(rec, name, ok):
    v = rec.get(name)
    if type(v) is not list:
        return None
    kept = [x for x in v if ok(x)]
    if not kept and v:
        return None
    return kept


def f_keys(rec, name, label, path):
    def read(item):
        for field in path:
            if type(item) is not dict:
                return None
            item = item.get(field)
        if type(item) is str and label_of_key(item) == label:
            return item
        return None
    v = rec.get(name)
    if type(v) is not list:
        return []
    return [k for k in map(read, v) if k is not None]


READERS = {
    STR: f_string,
    TEXT: f_text,
    INT: f_integer,
    STRS: lambda rec, name: f_list(rec, name, lambda x: type(x) is str),
    INTS: lambda rec, name: f_list(rec, name, is_i64),
}


def q(s):
    return '"' + s.replace('"', '""') + '"'


def cell(kind, v):
    """A CSV cell, '' for nothing (what the writer leaves out: null, "", [] or [""...])."""
    if v is None:
        return ""
    if kind in (STR, TEXT):
        return q(v) if v else ""
    if kind == INT:
        return str(v)
    if kind == STRS:
        v = [x.replace(ARRAY_DELIM, " ") for x in v if x]
        return q(ARRAY_DELIM.join(v)) if v else ""
    if kind == INTS:
        return q(ARRAY_DELIM.join(map(str, v))) if v else ""
    raise ValueError(kind)


def parse(line):
    """The record of one dump line as bookworm import reads it: None for a redirect or a
    delete, else (label, key, {prop: cell}, revision, last_modified, [(rel, to)], subjects).
    Raises Skip for what the importer dead-letters."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise Skip("encoding")
    cols = text.split("\t", 4)
    if len(cols) != 5:
        raise Skip("columns")
    kind_col, key_col, rev_col, _, body = cols
    if kind_col not in KNOWN_TYPES:
        raise Skip("unknown type")
    try:
        rec = json.loads(body)
    except ValueError:
        raise Skip("json")
    if type(rec) is not dict:
        raise Skip("shape")
    key, kind, err = rec.get("key"), rec.get("type"), rec.get("error")
    if key is not None and type(key) is not str:
        raise Skip("json")
    if kind is not None and (type(kind) is not dict or type(kind.get("key")) is not str):
        raise Skip("json")
    for name in ("error", "location"):
        if rec.get(name) is not None and type(rec[name]) is not str:
            raise Skip("json")
    if err == "notfound":
        raise Skip("notfound")
    if key is None:
        raise Skip("shape")
    kind = kind["key"] if kind else ""
    if kind in ("/type/redirect", "/type/delete"):
        if kind == "/type/redirect" and rec.get("location") is None:
            raise Skip("shape")
        if key != key_col:
            raise Skip("key mismatch")
        return None
    label = {"/type/work": "Work", "/type/author": "Author", "/type/edition": "Edition"}.get(kind)
    if label is None or label_of_key(key) != label:
        raise Skip("shape")
    if key != key_col:
        raise Skip("key mismatch")
    revision = f_integer(rec, "revision")
    if revision is None:
        try:
            revision = int(rev_col.strip())
            if not is_i64(revision):
                revision = None
        except ValueError:
            revision = None
    last_modified = f_text(rec, "last_modified")
    props = [cell(t, READERS[t](rec, name)) for name, t in SCHEMA[label][1]]
    out, seen, subjects = [], set(), []

    def push(rel, to):
        if (rel, to) not in seen:
            seen.add((rel, to))
            out.append((rel, to))

    strings = None
    if label == "Work":
        for a in f_keys(rec, "authors", "Author", ("author", "key")):
            push("WRITTEN_BY", a)
        strings = READERS[STRS](rec, "subjects") or []
        keys = set()
        for s in strings:
            k = subject_key(s)
            if k is not None and k not in keys:
                keys.add(k)
                subjects.append((k, s))
        subjects = subjects[:MAX_SUBJECTS]
        for k, _ in subjects:
            push("ABOUT", k)
    elif label == "Edition":
        for w in f_keys(rec, "works", "Work", ("key",)):
            push("EDITION_OF", w)
        for a in f_keys(rec, "authors", "Author", ("key",)):
            push("WRITTEN_BY", a)
    return label, key, props, revision, last_modified, out, subjects


MAX_SUBJECTS = 10


def open_dump(path):
    """The dump's bytes, decompressed by a `gzip -dc` child when gzipped (a second core)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        if shutil.which("gzip"):
            child = subprocess.Popen(["gzip", "-dc", path], stdout=subprocess.PIPE,
                                     bufsize=1 << 20)
            return child.stdout, child
        return gzip.open(path, "rb"), None
    return open(path, "rb", buffering=1 << 20), None


def default_crawl_id(path):
    """import::default_crawl_id."""
    stem = os.path.basename(path).split(".")[0]
    date = stem.rsplit("_", 1)[-1]
    try:
        datetime.strptime(date, "%Y-%m-%d")
        return "import:" + date
    except ValueError:
        return "import:" + stem


def main():
    global MAX_SUBJECTS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump")
    ap.add_argument("out_dir")
    ap.add_argument("--crawl-id")
    ap.add_argument("--max-subjects", type=int, default=10,
                    help="MAX_SUBJECTS_PER_NODE (default 10)")
    ap.add_argument("--sort-memory", default="512M", help="sort -S for the stub search")
    args = ap.parse_args()
    MAX_SUBJECTS = args.max_subjects
    started = time.monotonic()
    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    crawl_id = args.crawl_id or default_crawl_id(args.dump)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The writer's own properties, the same on every row of this load.
    own = ",".join([q(crawl_id), "1", now])

    files = {}

    def writer(name, header):
        if name not in files:
            f = open(os.path.join(out, name), "w", encoding="utf-8", newline="",
                     buffering=1 << 20)
            if header is not None:  # a `*-ml.csv` follows its label's file: no header
                f.write(header + "\n")
            files[name] = f
        return files[name]

    node_headers = {}
    for label, (stem, cols) in SCHEMA.items():
        node_headers[label] = ",".join(["key:ID"] + [n + CSV_TYPE[t] for n, t in cols]) + "," + COMMON_NODE
        writer(stem + ".csv", node_headers[label])
    subjects_f = writer("subjects.csv", "key:ID,name,stub:boolean,crawls:string[],crawl_count:long,updated_at:datetime")
    rel_f = {rel: writer(rel.lower() + ".csv", REL_HEADER) for rel in RELS}
    records_keys = open(os.path.join(out, ".record-keys"), "w", encoding="utf-8", buffering=1 << 20)
    end_keys = open(os.path.join(out, ".end-keys"), "w", encoding="utf-8", buffering=1 << 20)

    counts = {"lines": 0, "redirects": 0, "deletes": 0, "skipped": {}, "nodes": {},
              "relationships": {r: 0 for r in RELS}, "invalid_keys": 0}
    nodes = counts["nodes"]
    for label in ("Work", "Author", "Edition", "Subject", "stub"):
        nodes[label] = 0
    subject_keys = set()
    multiline = set()

    stream, child = open_dump(args.dump)
    for raw in stream:
        counts["lines"] += 1
        line = raw.rstrip(b"\r\n")  # as the importer trims each line
        try:
            parsed = parse(line)
        except Skip as why:
            counts["skipped"][str(why)] = counts["skipped"].get(str(why), 0) + 1
            continue
        if parsed is None:
            kind = line.split(b"\t", 1)[0]
            counts["redirects" if kind == b"/type/redirect" else "deletes"] += 1
            continue
        label, key, props, revision, last_modified, rels, subjects = parsed
        if not valid_key(key):
            counts["invalid_keys"] += 1  # the writer refuses the node and its edges
            continue
        row = ",".join([q(key)] + props + [
            "" if revision is None else str(revision),
            q(last_modified) if last_modified else "", "false", own]) + "\n"
        stem = SCHEMA[label][0]
        if "\n" in row[:-1] or "\r" in row:
            name = stem + "-ml.csv"
            multiline.add(name)
            writer(name, None).write(row)
        else:
            files[stem + ".csv"].write(row)
        nodes[label] += 1
        records_keys.write(key + "\n")
        rev = "" if revision is None else str(revision)
        for k, spelling in subjects:
            if k not in subject_keys and valid_key(k):
                subject_keys.add(k)
                name = rust_trim(spelling)
                srow = ",".join([q(k), q(name) if name else "", "false", own]) + "\n"
                if "\n" in srow[:-1] or "\r" in srow:
                    multiline.add("subjects-ml.csv")
                    writer("subjects-ml.csv", None).write(srow)
                else:
                    subjects_f.write(srow)
                nodes["Subject"] += 1
        for rel, to in rels:
            if not valid_key(to) or "\n" in to or "\r" in to:
                # the writer dead-letters an invalid key; a line break (never seen in real
                # keys) would break the one-key-a-line stub search, so it is dropped too
                counts["invalid_keys"] += 1
                continue
            if not to.startswith("/subjects/"):
                end_keys.write(to + "\n")
            rel_f[rel].write(",".join([q(key), q(to), rev, own]) + "\n")
            counts["relationships"][rel] += 1
    if child is not None and child.wait() != 0:
        sys.exit(f"gzip -dc {args.dump} failed")
    records_keys.close()
    end_keys.close()

    # Ends without a record line: sort both key lists (bounded memory) and keep what only the
    # ends have. Keys hold no tab or line break (dump columns), so one key a line is safe.
    parsed_at = time.monotonic()
    env = dict(os.environ, LC_ALL="C")
    tmp = ["-T", out]
    for name in (".record-keys", ".end-keys"):
        path = os.path.join(out, name)
        subprocess.run(["sort", "-u", "-S", args.sort_memory, *tmp, "-o", path, path],
                       env=env, check=True)
    stubs_f = writer("stubs.csv", "key:ID,:LABEL,stub:boolean,crawls:string[],crawl_count:long,updated_at:datetime")
    comm = subprocess.Popen(["comm", "-13", os.path.join(out, ".record-keys"),
                             os.path.join(out, ".end-keys")], stdout=subprocess.PIPE, env=env,
                            text=True, encoding="utf-8", bufsize=1 << 20)
    stub_labels = {}
    for k in comm.stdout:
        k = k.rstrip("\n")
        label = label_of_key(k)
        stubs_f.write(",".join([q(k), label, "true", own]) + "\n")
        stub_labels[label] = stub_labels.get(label, 0) + 1
        nodes["stub"] += 1
    if comm.wait() != 0:
        sys.exit("comm failed")
    os.unlink(os.path.join(out, ".record-keys"))
    os.unlink(os.path.join(out, ".end-keys"))
    for f in files.values():
        f.close()

    def path(name):
        return os.path.join(os.path.abspath(out), name)

    import_args = []
    for label, (stem, _) in SCHEMA.items():
        names = [stem + ".csv"] + ([stem + "-ml.csv"] if stem + "-ml.csv" in files else [])
        import_args.append(f"--nodes={label}=" + ",".join(path(n) for n in names))
    names = ["subjects.csv"] + (["subjects-ml.csv"] if "subjects-ml.csv" in files else [])
    import_args.append("--nodes=Subject=" + ",".join(path(n) for n in names))
    import_args.append("--nodes=" + path("stubs.csv"))
    for rel in RELS:
        import_args.append(f"--relationships={rel}=" + path(rel.lower() + ".csv"))
    if multiline:
        import_args.append("--multiline-fields-format=v2")
        import_args.append("--multiline-fields=" + ",".join(path(n) for n in sorted(multiline)))
    with open(os.path.join(out, "import.args"), "w") as f:
        f.write("\n".join(import_args) + "\n")

    counts["stubs_by_label"] = stub_labels
    counts["nodes_total"] = sum(nodes.values())
    counts["relationships_total"] = sum(counts["relationships"].values())
    counts["rows"] = counts["nodes_total"] + counts["relationships_total"]
    # What bookworm import publishes: one results row per record and per subject (a subject
    # once per SubjectsSeen window), one edges row per relationship; stubs are no rows.
    counts["bookworm_rows"] = (counts["nodes_total"] - nodes["stub"]) + counts["relationships_total"]
    counts["multiline_files"] = sorted(multiline)
    counts["crawl_id"] = crawl_id
    counts["csv_bytes"] = sum(os.path.getsize(path(n)) for n in files)
    counts["seconds"] = {"parse": round(parsed_at - started, 3),
                         "stubs": round(time.monotonic() - parsed_at, 3),
                         "total": round(time.monotonic() - started, 3)}
    text = json.dumps(counts, indent=1)
    with open(os.path.join(out, "summary.json"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
