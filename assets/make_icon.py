#!/usr/bin/env python3
"""Draws assets/icon.png, the window icon: two keyframes (a teal and an amber disc) and the
walk between them (dots blending from one colour to the other) on a dark rounded square.

Standard library only (zlib + struct write the PNG), so it runs anywhere:
    python3 assets/make_icon.py
"""
import math
import struct
import zlib
from pathlib import Path

SIZE = 64
SUPER = 4  # samples per pixel side, for smooth edges
A = (40, 200, 190)  # keyframe A: teal
B = (250, 170, 50)  # keyframe B: amber
BG = (22, 24, 32)


def rounded_square(x, y):
    """Inside a square of side SIZE with corners of radius 12."""
    r = 12.0
    cx = min(max(x, r), SIZE - r)
    cy = min(max(y, r), SIZE - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def discs():
    """(centre x, centre y, radius, colour): the keyframes and the walk's dots."""
    (ax, ay), (bx, by) = (16.0, 44.0), (48.0, 20.0)
    out = [(ax, ay, 9.0, A), (bx, by, 9.0, B)]
    for i in range(1, 6):
        t = i / 6
        # A gentle arc, as a latent walk is not a straight line.
        x = ax + (bx - ax) * t - 6.0 * math.sin(math.pi * t)
        y = ay + (by - ay) * t - 6.0 * math.sin(math.pi * t)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(A, B))
        out.append((x, y, 3.2, colour))
    return out


def pixel(px, py, shapes):
    acc = [0.0, 0.0, 0.0, 0.0]
    for sy in range(SUPER):
        for sx in range(SUPER):
            x = px + (sx + 0.5) / SUPER
            y = py + (sy + 0.5) / SUPER
            if not rounded_square(x, y):
                continue
            colour = BG
            for cx, cy, r, c in shapes:
                if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                    colour = c
            for k in range(3):
                acc[k] += colour[k]
            acc[3] += 255
    n = SUPER * SUPER
    alpha = acc[3] / n
    if alpha == 0:
        return (0, 0, 0, 0)
    # Colour un-premultiplied: the average over covered samples only.
    covered = acc[3] / 255
    return tuple(round(acc[k] / covered) for k in range(3)) + (round(alpha),)


def png(width, height, rgba_rows):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(row) for row in rgba_rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def main():
    shapes = discs()
    rows = []
    for y in range(SIZE):
        row = []
        for x in range(SIZE):
            row.extend(pixel(x, y, shapes))
        rows.append(row)
    out = Path(__file__).with_name("icon.png")
    out.write_bytes(png(SIZE, SIZE, rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
