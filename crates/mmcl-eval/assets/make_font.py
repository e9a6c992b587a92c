"""Regenerates MmclSans.ttf: a small subset of DejaVu Sans embedded for plot text.

Usage: python3 make_font.py /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
Needs fontTools. The subset keeps Latin-1, a few typographic and Greek symbols and kerning,
drops hinting, and renames the family (the Bitstream Vera licence asks modified fonts to be
renamed).
"""

import sys

from fontTools import subset
from fontTools.ttLib import TTFont

EXTRA = [0x2013, 0x2014, 0x2026, 0x2212, 0x2264, 0x2265, 0x3B1, 0x3B2, 0x394, 0x3BC, 0x3C3,
         0x3C4, 0x2192, 0x2022]


def main(source: str) -> None:
    options = subset.Options()
    options.layout_features = ["kern"]
    options.hinting = False
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = TTFont(source)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=list(range(0x20, 0x7F)) + list(range(0xA0, 0x100)) + EXTRA)
    subsetter.subset(font)
    for record in font["name"].names:
        if record.nameID in (1, 3, 4, 6, 16, 17, 18):
            text = record.toUnicode()
            for old in ("DejaVu Sans", "DejaVuSans", "DejaVu"):
                text = text.replace(old, "MmclSans" if old != "DejaVu" else "Mmcl")
            record.string = text
    font.save("MmclSans.ttf")


if __name__ == "__main__":
    main(sys.argv[1])
