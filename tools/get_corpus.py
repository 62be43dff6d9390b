#!/usr/bin/env python3
"""Fetch the training corpus for minillm-tiny: Jane Austen's six novels.

Where the text comes from
-------------------------
Debian packages the R data package ``janeaustenr`` (Julia Silge, MIT licence) as
``r-cran-janeaustenr``. It holds the full text of the six finished novels, taken from
Project Gutenberg. The novels themselves (1811-1817) are in the public domain, so a model
trained on them can be shared freely.

We only need the data, not R (installing R would pull in ~700 packages), so we
``apt-get download`` the .deb, unpack it with ``dpkg-deb -x`` and read R's "lazy-load
database" file ourselves: it is a handful of zlib-compressed, XDR-serialised character
vectors, one per novel, one element per line of text. That takes ~40 lines below.

What it writes
--------------
    OUT/train/<book>.txt   the first 95% of each novel's paragraphs  (trained on)
    OUT/valid/<book>.txt   the last 5% of each novel's paragraphs     (held out, never trained on)
    OUT/SOURCE.txt         package, version, sha256 of the .deb, and the licence note

Paragraphs are separated by one blank line; the hard line breaks of the Gutenberg text are
joined into single lines so the model learns prose, not 70-column wrapping.

Usage:  python tools/get_corpus.py [--out data/austen] [--deb path/to/r-cran-janeaustenr.deb]
(needs `apt-get update` to have been run once, unless --deb is given; apt's warning
"Download is performed unsandboxed as root" is harmless)
"""
from __future__ import annotations

import argparse
import hashlib
import re
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

PACKAGE = "r-cran-janeaustenr"
# Path of the data file inside the package.
RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
# The six novels; each file is named after the title on the novel's first line.
BOOKS = {"emma", "mansfield_park", "northanger_abbey", "persuasion",
         "pride_and_prejudice", "sense_and_sensibility"}
VALID_FRACTION = 0.05


def download_deb(workdir: Path) -> Path:
    """`apt-get download` the package into workdir and return the .deb's path."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    return next(workdir.glob(f"{PACKAGE}_*.deb"))


def read_lazyload_db(rdb: bytes) -> list[bytes]:
    """Split an R .rdb file into its objects, each returned as serialised bytes.

    Each object is stored as a 4-byte big-endian length followed by a zlib stream. We walk
    the file stream by stream (zlib tells us where each one ends), so we need not parse the
    .rdx index at all.
    """
    objects, pos = [], 0
    while pos < len(rdb):
        (size,) = struct.unpack(">I", rdb[pos:pos + 4])
        inflater = zlib.decompressobj()
        raw = inflater.decompress(rdb[pos + 4:])
        assert len(raw) == size, "unexpected .rdb layout"
        objects.append(raw)
        pos = len(rdb) - len(inflater.unused_data)
    return objects


def parse_character_vector(blob: bytes) -> list[str]:
    """Decode one XDR-serialised R character vector (STRSXP) into Python strings."""
    assert blob[:2] == b"X\n", "not an XDR serialisation"
    pos = 2
    version = struct.unpack(">i", blob[pos:pos + 4])[0]
    pos += 12                                    # version, writer version, min reader version
    if version == 3:                             # v3 also records the native encoding name
        (n,) = struct.unpack(">i", blob[pos:pos + 4])
        pos += 4 + n
    flags, length = struct.unpack(">ii", blob[pos:pos + 8])
    pos += 8
    assert flags & 0xFF == 16, "expected a character vector (STRSXP)"
    lines = []
    for _ in range(length):
        _flags, n = struct.unpack(">ii", blob[pos:pos + 8])   # each element is a CHARSXP
        pos += 8
        if n == -1:                              # NA_character_
            lines.append("")
            continue
        lines.append(blob[pos:pos + n].decode("utf-8"))
        pos += n
    return lines


def to_paragraphs(lines: list[str]) -> list[str]:
    """Join wrapped lines into paragraphs and drop chapter/volume headings."""
    paragraphs, current = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            current.append(line)
            continue
        if current:
            paragraphs.append(" ".join(current))
            current = []
    heading = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume)\b[\s\w.]*$")
    # Gutenberg marks italics as _word_ and puts two spaces after a full stop; both would
    # only be noise to the model.
    return [re.sub(r" {2,}", " ", p.replace("_", "")) for p in paragraphs if not heading.match(p)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/austen", type=Path)
    ap.add_argument("--deb", type=Path, help="use this .deb instead of apt-get download")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deb = args.deb or download_deb(tmp)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        blobs = read_lazyload_db((tmp / "x" / RDB).read_bytes())
        deb_sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        deb_name = deb.name

    assert len(blobs) == len(BOOKS), f"expected {len(BOOKS)} novels, found {len(blobs)}"
    for split in ("train", "valid"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    total = {"train": 0, "valid": 0}
    for blob in blobs:
        paragraphs = to_paragraphs(parse_character_vector(blob))
        name = paragraphs[0].lower().replace(" ", "_")     # the title, e.g. "MANSFIELD PARK"
        assert name in BOOKS, f"unexpected title {paragraphs[0]!r}"
        n_valid = max(1, int(len(paragraphs) * VALID_FRACTION))
        # The held-out part is the *end* of each novel: a fixed, contiguous slice, so no
        # held-out sentence is ever seen in training, not even as context.
        for split, part in (("train", paragraphs[:-n_valid]), ("valid", paragraphs[-n_valid:])):
            text = "\n\n".join(part) + "\n"
            (args.out / split / f"{name}.txt").write_text(text, encoding="utf-8")
            total[split] += len(text)
        print(f"{name:24s} {len(paragraphs):6d} paragraphs, first: {paragraphs[0][:40]!r}")

    (args.out / "SOURCE.txt").write_text(
        f"Debian package {deb_name} (sha256 {deb_sha})\n"
        "Jane Austen's six completed novels (1811-1817), public domain, via Project Gutenberg.\n"
        "janeaustenr R package: Copyright 2016-2017 Julia Silge, MIT licence.\n"
    )
    print(f"wrote {args.out}: train {total['train']/1e6:.2f} MB, valid {total['valid']/1e6:.2f} MB")


if __name__ == "__main__":
    main()
