#!/usr/bin/env python
"""Generate an offline, seeded CORD-v2-like dataset (no download, no network).

The layout matches the Hugging Face hub dataset ``naver-clova-ix/cord-v2``::

    OUT/data/train-00000-of-00001.parquet
    OUT/data/validation-00000-of-00001.parquet
    OUT/data/test-00000-of-00001.parquet

Each file has an ``image`` column (``datasets.Image()``: ``{"bytes", "path"}``)
and a ``ground_truth`` column (a JSON string with ``gt_parse``, ``meta``,
``valid_line``, ``roi``, ``repeating_symbol`` and ``dontcare``, like CORD), so
``datasets.load_dataset(OUT)`` and ``load_dataset(OUT, split="test")`` work.

Receipts are drawn with PIL's default font; every value in ``gt_parse`` is
printed on the receipt, word for word (glyphs PIL's font lacks, e.g. CJK, print
as fallback boxes; the ground truth keeps the true text).

    python scripts/make_cord_sample.py OUT [--train 24] [--validation 6] [--test 6]
        [--seed 0] [--photo-like] [--bad-records N] [--workers W] [--force]

``--photo-like`` renders CORD-scale camera-like JPEGs (~1600x2400, ~2.5 MB each)
for export benchmarks and shards each split so that no file passes ~450 MB.
``--bad-records N`` appends N broken rows to train (corrupt image bytes, a
ground_truth that is not JSON, a ground_truth without ``gt_parse``, in turn).

The same seed gives byte-identical parquet files (same Pillow/pyarrow builds).
A split asked for with 0 rows gets no file (``datasets`` cannot read a parquet
file with no rows). Output is built in a temporary folder next to OUT and
renamed into place; an existing non-empty OUT is refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Photo-like shards roll over before this many image bytes (kept well under 500 MB).
SHARD_BYTES = 450 * 1024 * 1024
FEATURES_METADATA = {
    "info": {
        "features": {
            "image": {"_type": "Image"},
            "ground_truth": {"dtype": "string", "_type": "Value"},
        }
    }
}

STORES = (
    "WARUNG SEDERHANA", "KOPI KENANGAN", "BAKMI GM", "Café de Flore", "RAMEN YA",
    "Toko Roti Enak", "SATE KHAS SENAYAN", "Boulangerie Paul", "SUSHI TEI", "Bakso Malang",
    "Pâtisserie Élise", "Phở 24",
)
STREETS = ("Jl. Sudirman No. 12", "Jl. Thamrin 45", "Jl. Gatot Subroto Kav. 3", "Grand Indonesia L2",
           "Jl. Kemang Raya 8")
# (name, unit price in rupiah)
ITEMS = (
    ("Nasi Goreng", 35000), ("Mie Ayam", 28000), ("Es Teh Manis", 8000), ("Jus Jeruk", 18000),
    ("Café Latte", 32000), ("Crème brûlée", 45000), ("Bánh mì", 38000), ("カレー", 55000),
    ("Ayam Bakar", 42000), ("Kopi Susu", 22000), ("Teh Tarik", 15000), ("Roti Bakar Coklat", 25000),
    ("Sate Ayam", 30000), ("Soto Betawi", 40000), ("Pisang Goreng", 12000), ("Croissant", 27000),
    ("Matcha Latte", 36000), ("Gado-gado", 26000), ("Nasi Campur Bali", 75000), ("Açaí Bowl", 48000),
    ("ラーメン", 60000), ("Iced Americano", 29000), ("Mineral Water", 7000), ("Cheese Cake", 39000),
    ("Bakso Urat", 33000), ("Phở Bò", 52000), ("Pain au chocolat", 31000), ("抹茶", 24000),
    ("Es Campur", 21000), ("Tahu Telur", 23000),
)
NON_ASCII_ITEMS = tuple(item for item in ITEMS if not item[0].isascii())
SUBS = (
    ("Extra Shot", 5000), ("Less Sugar", 0), ("Keju", 6000), ("Telur", 5000), ("Oat Milk", 8000),
    ("Large", 4000), ("Ice", 0), ("Sambal", 2000), ("Whipped Cream", 6000), ("Crème", 3000),
)
CNT_FORMATS = ("{n} x", "{n}", "{n}x", "x{n}")
# Real receipts do not always add up on paper, and CORD labels what is printed. Shares of receipts that
# print no subtotal (CORD omits it on many), list a tax already included in the prices (so the total is
# not subtotal + tax), or round the total to 500 rupiah without printing the rounding. These are guesses
# at CORD's mix (the real rates were not measured here); they make the consistency checks' ground-truth
# pass rate, and their "not applicable" cases, something to measure rather than 100% by construction.
OMIT_SUBTOTAL = 0.35
TAX_INCLUSIVE = 0.08
ROUNDED_TOTAL = 0.06

DEFAULT_WIDTHS = (320, 384, 448, 512, 576, 640)
PHOTO_SIZES = ((1600, 2400), (1700, 2400), (1536, 2304))
PHOTO_JPEG_QUALITY = 95


# --------------------------------------------------------------------------- content


def _money(value: int) -> str:
    return f"{value:,}"


def _doc_rng(seed: int, split: str, index: int) -> random.Random:
    # String seeds hash with SHA-512 in CPython, independent of PYTHONHASHSEED.
    return random.Random(f"cord-sample:{seed}:{split}:{index}")


def make_simple_doc(rng: random.Random) -> dict:
    """A plain receipt (``--simple``): one to three menu rows of name, count and price, a subtotal and a total.

    For the demo: a model of width 128 trained for two minutes on a CPU can learn this shape and its
    frequent values, while CORD's full variety (nested ``sub``, taxes, cash, dict menus) needs more.
    """
    items, subtotal = [], 0
    for name, unit in rng.sample(ITEMS, rng.choice((1, 2, 2, 3))):
        n = rng.choice((1, 1, 1, 2))
        items.append({"nm": name, "cnt": f"{n} x", "price": _money(unit * n)})
        subtotal += unit * n
    gt_parse = {"menu": items, "sub_total": {"subtotal_price": _money(subtotal)},
                "total": {"total_price": _money(subtotal)}}
    header = {"store": rng.choice(STORES), "street": rng.choice(STREETS),
              "stamp": f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/2019 12:00",
              "bill": f"Bill #{rng.randrange(1000, 99999)}", "footer": "THANK YOU"}
    return {"gt_parse": gt_parse, "header": header}


def make_doc(rng: random.Random, index: int) -> dict:
    """A receipt's content: gt_parse plus what is printed around it.

    The first rows of every split are steered so a small split still holds a
    nested ``sub`` (index 0), a non-ASCII item name (index 1) and a single-dict
    ``menu`` (index 2).
    """
    n_items = 1 if index == 2 else rng.choice((1, 2, 2, 3, 3, 3, 4, 4, 5, 6))
    menu_as_dict = n_items == 1 and (index == 2 or rng.random() < 0.6)
    cnt_format = rng.choice(CNT_FORMATS)
    with_num = rng.random() < 0.15
    unitprice_mode = rng.choice(("never", "never", "multi", "always"))
    picks = rng.sample(ITEMS, n_items)
    if index == 1 and not any(name in dict(NON_ASCII_ITEMS) for name, _ in picks):
        picks[-1] = rng.choice(NON_ASCII_ITEMS)
    items = []
    subtotal = 0
    qty = 0
    for k, (name, unit) in enumerate(picks):
        n = rng.choice((1, 1, 1, 1, 2, 2, 3))
        qty += n
        item: dict = {"nm": name}
        if with_num:
            item["num"] = str(100 + rng.randrange(900))
        if unitprice_mode == "always" or (unitprice_mode == "multi" and n > 1):
            item["unitprice"] = _money(unit)
        item["cnt"] = cnt_format.format(n=n)
        item["price"] = _money(unit * n)
        subtotal += unit * n
        want_sub = (index == 0 and k == 0) or rng.random() < 0.18
        if want_sub:
            subs = []
            for sub_name, sub_price in rng.sample(SUBS, rng.choice((1, 1, 2))):
                sub: dict = {"nm": sub_name}
                if sub_price:
                    sub["price"] = _money(sub_price * n)
                    subtotal += sub_price * n
                subs.append(sub)
            item["sub"] = subs[0] if len(subs) == 1 and rng.random() < 0.5 else subs
        items.append(item)

    # How this receipt departs from the arithmetic, from its own stream so every other draw stays as it was.
    shape = random.Random(f"cord-sample-shape:{rng.getstate()[1]}")  # reads rng, draws nothing
    omit_subtotal = shape.random() < OMIT_SUBTOTAL
    tax_inclusive = shape.random() < TAX_INCLUSIVE
    rounded_total = shape.random() < ROUNDED_TOTAL
    sub_total: dict = {} if omit_subtotal else {"subtotal_price": _money(subtotal)}
    total_value = subtotal
    if rng.random() < 0.3:
        discount = max(1000, round(subtotal * rng.choice((0.05, 0.1, 0.2)) / 1000) * 1000)
        discount = min(discount, subtotal // 2)
        sub_total["discount_price"] = ("-" if rng.random() < 0.6 else "") + _money(discount)
        total_value -= discount
    if rng.random() < 0.35:
        service = round(subtotal * rng.choice((0.05, 0.07)))
        sub_total["service_price"] = _money(service)
        total_value += service
    if rng.random() < 0.6:
        tax = round(subtotal * 0.1)
        sub_total["tax_price"] = _money(tax)
        if not tax_inclusive:
            total_value += tax
    if rounded_total and total_value % 500:
        total_value = round(total_value / 500) * 500 or total_value
    total: dict = {"total_price": _money(total_value)}
    if rng.random() < 0.55:
        step = rng.choice((10000, 50000, 100000))
        cash = math.ceil(total_value / step) * step
        if rng.random() < 0.3:
            cash += step
        total["cashprice"] = _money(cash)
        if rng.random() < 0.85:
            total["changeprice"] = _money(cash - total_value)
    if rng.random() < 0.3:
        total["menuqty_cnt"] = str(qty)

    gt_parse = {"menu": items[0] if menu_as_dict else items, **({"sub_total": sub_total} if sub_total else {}),
                "total": total}
    header = {
        "store": rng.choice(STORES),
        "street": rng.choice(STREETS),
        "stamp": f"{rng.randrange(1, 29):02d}/{rng.randrange(1, 13):02d}/20{rng.randrange(17, 20)} "
        f"{rng.randrange(8, 23):02d}:{rng.randrange(60):02d}",
        "bill": f"Bill #{rng.randrange(1000, 99999)}",
        "footer": rng.choice(("THANK YOU", "Terima Kasih", "Merci !", "See you again")),
    }
    return {"gt_parse": gt_parse, "header": header}


# --------------------------------------------------------------------------- layout
#
# A row is {"left": [seg...], "right": [seg...], "center": [seg...], "big": bool};
# a segment is (text, category-or-None, is_key, group_id). Segments without a
# category are decoration (store name, separators): printed but not labelled,
# like CORD's unlabelled text.


def _rows(doc: dict) -> list[dict]:
    gt = doc["gt_parse"]
    head = doc["header"]
    rows: list[dict] = [
        {"center": [(head["store"], None, 0, 0)], "big": True},
        {"center": [(head["street"], None, 0, 0)]},
        {"left": [(head["stamp"], None, 0, 0)], "right": [(head["bill"], None, 0, 0)]},
        {"rule": True},
    ]
    menu = gt["menu"] if isinstance(gt["menu"], list) else [gt["menu"]]
    group = 0
    for item in menu:
        group += 1
        left = []
        if "num" in item:
            left.append((item["num"], "menu.num", 0, group))
        if "unitprice" not in item:
            left.append((item["cnt"], "menu.cnt", 0, group))
        left.append((item["nm"], "menu.nm", 0, group))
        rows.append({"left": left, "right": [(item["price"], "menu.price", 0, group)]})
        if "unitprice" in item:
            rows.append({
                "left": [("", None, 0, 0), (item["cnt"], "menu.cnt", 0, group), ("@", None, 0, 0),
                         (item["unitprice"], "menu.unitprice", 0, group)],
            })
        subs = item.get("sub", [])
        for sub_group, sub in enumerate(subs if isinstance(subs, list) else [subs], start=1):
            row = {
                "left": [("", None, 0, 0), ("+", None, 0, 0), (sub["nm"], "menu.sub_nm", 0, group)],
                "sub_group": sub_group,
            }
            if "price" in sub:
                row["right"] = [(sub["price"], "menu.sub_price", 0, group)]
            rows.append(row)
    rows.append({"rule": True})

    def keyed(label: str, value: str, category: str) -> dict:
        nonlocal group
        group += 1
        return {"left": [(label, category, 1, group)], "right": [(value, category, 0, group)]}

    st = gt.get("sub_total", {})
    for key, label in (("subtotal_price", "SUBTOTAL"), ("discount_price", "DISCOUNT"), ("service_price", "SERVICE"),
                       ("tax_price", "TAX")):
        if key in st:
            rows.append(keyed(label, st[key], f"sub_total.{key}"))
    if st:
        rows.append({"rule": True})
    tot = gt["total"]
    rows.append(keyed("TOTAL", tot["total_price"], "total.total_price"))
    for key, label in (("cashprice", "CASH"), ("changeprice", "CHANGE"), ("menuqty_cnt", "QTY")):
        if key in tot:
            rows.append(keyed(label, tot[key], f"total.{key}"))
    rows.append({"rule": True})
    rows.append({"center": [(head["footer"], None, 0, 0)]})
    return rows


_FONTS: dict[int, object] = {}


def _font(size: int):
    from PIL import ImageFont

    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _seg_text(seg) -> str:
    return seg[0] if seg[0] else "  "  # an empty segment is an indent


def _row_width(row: dict, font, big_font) -> float:
    f = big_font if row.get("big") else font
    space = f.getlength(" ")
    width = 0.0
    for side in ("left", "right", "center"):
        segs = row.get(side, [])
        if segs:
            width += sum(f.getlength(_seg_text(s)) for s in segs) + space * (len(segs) - 1)
    if row.get("left") and row.get("right"):
        width += 2 * space
    return width


def _fit_font_size(rows: list[dict], text_width: int, size: int, max_height: int | None) -> int:
    while size > 8:
        font, big = _font(size), _font(round(size * 1.35))
        fits = all(_row_width(r, font, big) <= text_width for r in rows if not r.get("rule"))
        if fits and max_height is not None:
            fits = _rows_height(rows, size) <= max_height
        if fits:
            return size
        size -= 1
    return 8


def _line_height(size: int, big: bool = False) -> int:
    return round((size * 1.35 if big else size) * 1.5)


def _rows_height(rows: list[dict], size: int) -> int:
    return sum(_line_height(size, bool(r.get("big"))) if not r.get("rule") else round(size * 1.2) for r in rows)


def _quad(box) -> dict:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y1, "x3": x2, "y3": y2, "x4": x1, "y4": y2}


def _draw_rows(draw, rows: list[dict], size: int, x0: int, x1: int, y0: int, ink) -> list[dict]:
    """Draw rows between x0 and x1 from y0; return CORD ``valid_line`` entries."""
    font, big_font = _font(size), _font(round(size * 1.35))
    lines: dict[tuple[int, str], dict] = {}
    order: list[tuple[int, str]] = []
    y = y0
    for row_id, row in enumerate(rows):
        if row.get("rule"):
            step = round(size * 1.2)
            dash = font.getlength("-")
            n = max(1, int((x1 - x0) / dash))
            draw.text((x0, y + (step - size) // 2), "-" * n, font=font, fill=ink)
            y += step
            continue
        f = big_font if row.get("big") else font
        space = f.getlength(" ")
        placed = []  # (x, seg)
        x = float(x0)
        for seg in row.get("left", []):
            placed.append((x, seg))
            x += f.getlength(_seg_text(seg)) + space
        x = float(x1)
        for seg in reversed(row.get("right", [])):
            x -= f.getlength(_seg_text(seg))
            placed.append((x, seg))
            x -= space
        centre = row.get("center", [])
        if centre:
            text = " ".join(_seg_text(s) for s in centre)
            x = x0 + ((x1 - x0) - f.getlength(text)) / 2
            for seg in centre:
                placed.append((x, seg))
                x += f.getlength(_seg_text(seg)) + space
        for x, (text, category, is_key, group) in placed:
            if not text:
                continue
            draw.text((x, y), text, font=f, fill=ink)
            if category is None:
                continue
            key = (row_id, category)
            if key not in lines:
                lines[key] = {"words": [], "category": category, "group_id": group,
                              "sub_group_id": row.get("sub_group", 0)}
                order.append(key)
            pos = 0
            for word in text.split(" "):
                if word:
                    wx = x + f.getlength(text[:pos])
                    box = draw.textbbox((wx, y), word, font=f)
                    lines[key]["words"].append({
                        "quad": _quad(box), "is_key": is_key, "row_id": row_id, "text": word,
                    })
                pos += len(word) + 1
        y += _line_height(size, bool(row.get("big")))
    return [lines[k] for k in order]


# --------------------------------------------------------------------------- rendering


def _render_plain(doc: dict, rng: random.Random, fmt: str) -> tuple[bytes, int, int, list[dict], dict]:
    from PIL import Image, ImageDraw

    rows = _rows(doc)
    width = rng.choice(DEFAULT_WIDTHS)
    margin = max(8, round(width * rng.uniform(0.03, 0.07)))
    pad = max(6, round(width * 0.04))
    text_x0, text_x1 = margin + pad, width - margin - pad
    size = _fit_font_size(rows, text_x1 - text_x0, max(9, round(width / 27)), None)
    height = 2 * (margin + pad) + _rows_height(rows, size)
    shade = rng.randrange(190, 222)
    background = (shade, shade - rng.randrange(0, 8), shade - rng.randrange(4, 16))
    paper = (rng.randrange(246, 256), rng.randrange(246, 256), rng.randrange(240, 252))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    roi = (margin, margin // 2, width - margin, height - margin // 2)
    draw.rectangle(roi, fill=paper)
    ink = (rng.randrange(10, 50),) * 3
    valid_line = _draw_rows(draw, rows, size, text_x0, text_x1, margin + pad, ink)
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, "PNG", optimize=False, compress_level=9)
    else:
        img.save(buf, "JPEG", quality=rng.choice((80, 85, 90)))
    return buf.getvalue(), width, height, valid_line, _quad(roi)


_TEXTURES: dict[tuple[int, int, int], tuple] = {}


def _photo_texture(width: int, height: int, seed: int):
    """Per-size camera texture, made once with numpy and reused (rolled) per image.

    Returns (noise, light): ``noise`` is signed sensor noise plus low-frequency
    paper mottling, generated by FFT filtering so it is periodic (rolling it
    leaves no seams); ``light`` is an uneven-lighting falloff that stays put.
    Both are PIL images holding value + 128, for ``ImageChops.add(offset=-128)``.
    """
    key = (width, height, seed)
    if key not in _TEXTURES:
        import numpy as np
        from PIL import Image

        gen = np.random.default_rng([seed, width, height, 2])
        white = gen.standard_normal((height, width)).astype(np.float32)
        spectrum = np.fft.rfft2(white)
        fy = np.fft.fftfreq(height)[:, None]
        fx = np.fft.rfftfreq(width)[None, :]
        mottle = np.fft.irfft2(spectrum * np.exp(-(fx**2 + fy**2) / (2 * 0.004**2)), s=(height, width))
        mottle *= 3.0 / (mottle.std() + 1e-6)
        luma = gen.normal(0.0, 18.0, (height, width)).astype(np.float32) + mottle.astype(np.float32)
        chroma = gen.normal(0.0, 5.0, (height, width, 3)).astype(np.float32)
        noise = luma[:, :, None] + chroma
        noise_img = Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8))

        yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
        fall = -26.0 * (0.55 * xx**2 + 0.45 * yy**2) - 8.0 * (yy + 1) / 2
        light = np.repeat(fall[:, :, None], 3, axis=2) + np.array([0.0, -1.0, -4.0], dtype=np.float32)
        light_img = Image.fromarray(np.clip(light + 128, 0, 255).astype(np.uint8))
        _TEXTURES[key] = (noise_img, light_img)
    return _TEXTURES[key]


def _render_photo(doc: dict, rng: random.Random, seed: int) -> tuple[bytes, int, int, list[dict], dict]:
    from PIL import Image, ImageChops, ImageDraw

    rows = _rows(doc)
    width, height = rng.choice(PHOTO_SIZES)
    paper_w = round(width * rng.uniform(0.62, 0.74))
    px0 = round((width - paper_w) * rng.uniform(0.35, 0.65))
    pad = round(paper_w * 0.06)
    top = round(height * rng.uniform(0.04, 0.1))
    text_x0, text_x1 = px0 + pad, px0 + paper_w - pad
    max_text_h = height - top - 2 * pad - round(height * 0.04)
    size = _fit_font_size(rows, text_x1 - text_x0, round(paper_w / 24), max_text_h)
    paper_bottom = min(height + 10, top + 2 * pad + _rows_height(rows, size) + round(height * rng.uniform(0.0, 0.15)))
    table = rng.choice(((128, 104, 82), (96, 96, 100), (150, 140, 125), (70, 60, 52)))
    img = Image.new("RGB", (width, height), table)
    draw = ImageDraw.Draw(img)
    roi = (px0, top, px0 + paper_w, paper_bottom)
    shadow = tuple(max(0, c - 35) for c in table)
    draw.rectangle((roi[0] + 10, roi[1] + 14, roi[2] + 10, roi[3] + 14), fill=shadow)
    draw.rectangle(roi, fill=(rng.randrange(238, 250), rng.randrange(236, 248), rng.randrange(226, 240)))
    ink = (rng.randrange(20, 60), rng.randrange(20, 60), rng.randrange(30, 70))
    valid_line = _draw_rows(draw, rows, size, text_x0, text_x1, top + pad, ink)

    noise, light = _photo_texture(width, height, seed)
    img = ImageChops.add(img, light, scale=1.0, offset=-128)
    img = ImageChops.add(img, ImageChops.offset(noise, rng.randrange(width), rng.randrange(height)), 1.0, -128)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=PHOTO_JPEG_QUALITY)
    return buf.getvalue(), width, height, valid_line, _quad(roi)


def render_record(task: tuple) -> tuple[bytes, str]:
    """One dataset row: (image bytes, ground_truth JSON). Pure in (seed, split, index, photo_like[, simple])."""
    seed, split, index, photo_like, *rest = task
    simple = bool(rest and rest[0])
    rng = _doc_rng(seed, split, index)
    doc = make_simple_doc(rng) if simple else make_doc(rng, index)
    if photo_like:
        image, width, height, valid_line, roi = _render_photo(doc, rng, seed)
    else:
        fmt = "PNG" if index == 1 or (index != 0 and rng.random() < 0.3) else "JPEG"
        image, width, height, valid_line, roi = _render_plain(doc, rng, fmt)
    ground_truth = {
        "gt_parse": doc["gt_parse"],
        "meta": {
            "version": "2.0.0",
            "split": split,
            "image_id": index,
            "image_size": {"width": width, "height": height},
        },
        "valid_line": valid_line,
        "roi": roi,
        "repeating_symbol": [],
        "dontcare": [],
    }
    return image, json.dumps(ground_truth, ensure_ascii=False)


BAD_KINDS = ("corrupt_image", "invalid_json", "missing_gt_parse")


def bad_record(seed: int, k: int, image_id: int) -> tuple[bytes, str]:
    """The k-th bad record (row ``image_id`` of train); kinds cycle through ``BAD_KINDS``."""
    kind = BAD_KINDS[k % len(BAD_KINDS)]
    image, gt = render_record((seed, "train-bad", k, False))
    parsed = json.loads(gt)
    parsed["meta"].update(split="train", image_id=image_id)
    gt = json.dumps(parsed, ensure_ascii=False)
    if kind == "corrupt_image":
        # A JPEG SOI/APP0 start, then garbage and no image data or EOI.
        rng = random.Random(f"cord-bad:{seed}:{k}")
        image = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(rng.randrange(256) for _ in range(61))
    elif kind == "invalid_json":
        gt = gt[: len(gt) // 2] + ' "broken'
    else:
        del parsed["gt_parse"]
        gt = json.dumps(parsed, ensure_ascii=False)
    return image, gt


# --------------------------------------------------------------------------- writing


def _arrow_schema():
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
            pa.field("ground_truth", pa.string()),
        ],
        metadata={"huggingface": json.dumps(FEATURES_METADATA)},
    )


class _ShardWriter:
    """Writes one split as parquet shards, rolling over past ``shard_bytes``.

    Shards are written under temporary names and renamed to
    ``{split}-{i:05d}-of-{n:05d}.parquet`` once the count is known.
    """

    def __init__(self, data_dir: Path, split: str, row_group: int, shard_bytes: int):
        self.data_dir, self.split = data_dir, split
        self.row_group, self.shard_bytes = row_group, shard_bytes
        self.schema = _arrow_schema()
        self.paths: list[Path] = []
        self.writer = None
        self.shard_size = 0
        self.buffer: list[tuple[bytes, str]] = []
        self.rows = 0

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.buffer:
            return
        table = pa.table(
            {
                "image": pa.array(
                    [{"bytes": img, "path": None} for img, _ in self.buffer], type=self.schema.field("image").type
                ),
                "ground_truth": pa.array([gt for _, gt in self.buffer], type=pa.string()),
            },
            schema=self.schema,
        )
        self.writer.write_table(table, row_group_size=len(self.buffer))
        self.buffer = []

    def _close_shard(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def add(self, image: bytes, ground_truth: str) -> None:
        import pyarrow.parquet as pq

        size = len(image) + len(ground_truth.encode("utf-8"))
        if self.writer is not None and self.shard_size + size > self.shard_bytes:
            self._close_shard()
        if self.writer is None:
            path = self.data_dir / f".{self.split}-{len(self.paths):05d}.partial"
            self.paths.append(path)
            self.writer = pq.ParquetWriter(path, self.schema, compression="snappy", write_statistics=False)
            self.shard_size = 0
        self.buffer.append((image, ground_truth))
        self.shard_size += size
        self.rows += 1
        if len(self.buffer) >= self.row_group:
            self._flush()

    def close(self) -> list[Path]:
        self._close_shard()
        final = []
        for i, path in enumerate(self.paths):
            target = self.data_dir / f"{self.split}-{i:05d}-of-{len(self.paths):05d}.parquet"
            path.rename(target)
            final.append(target)
        return final


def _records(tasks, workers: int):
    if workers <= 1 or len(tasks) < 4:
        for task in tasks:
            yield render_record(task)
        return
    import multiprocessing

    # spawn: no fork of a process that may already run pyarrow threads.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(render_record, tasks, chunksize=2)


def _write(data_dir: Path, counts: dict[str, int], seed: int, photo_like: bool, bad_records: int, workers: int,
           simple: bool = False) -> dict:
    row_group = 32 if photo_like else 100
    written: dict[str, list[str]] = {}
    for split in SPLITS:
        n = counts[split]
        extra = bad_records if split == "train" else 0
        if n + extra == 0:
            continue
        writer = _ShardWriter(data_dir, split, row_group, SHARD_BYTES)
        tasks = [(seed, split, i, photo_like, simple) for i in range(n)]
        for image, gt in _records(tasks, workers):
            writer.add(image, gt)
        for k in range(extra):
            writer.add(*bad_record(seed, k, n + k))
        written[split] = [p.name for p in writer.close()]
    return written


def generate(
    out_dir,
    *,
    train: int = 24,
    validation: int = 6,
    test: int = 6,
    seed: int = 0,
    photo_like: bool = False,
    bad_records: int = 0,
    force: bool = False,
    workers: int | None = None,
    simple: bool = False,
) -> dict:
    """Build the sample at ``out_dir``, atomically; return row counts.

    Returns ``{"train": rows, "validation": rows, "test": rows, "bad_records": N}``
    where train's rows include the N bad records. Raises ``FileExistsError`` if
    ``out_dir`` exists and is not empty, unless ``force``.
    """
    counts = {"train": train, "validation": validation, "test": test}
    if any(v < 0 for v in counts.values()) or bad_records < 0:
        raise ValueError("counts must be >= 0")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --force to replace it")
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if photo_like else 1
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        data_dir = tmp / "data"
        data_dir.mkdir()
        _write(data_dir, counts, seed, photo_like, bad_records, workers, simple)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = {split: counts[split] for split in SPLITS}
    result["train"] += bad_records
    result["bad_records"] = bad_records
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output folder (gets data/*.parquet)")
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--validation", type=int, default=6)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photo-like", action="store_true", help="~1600x2400 camera-like JPEGs (~2.5 MB each)")
    parser.add_argument("--bad-records", type=int, default=0, metavar="N", help="append N broken rows to train")
    parser.add_argument("--workers", type=int, default=None,
                        help="render processes (default: CPU count for --photo-like, else 1)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT")
    parser.add_argument("--simple", action="store_true",
                        help="plain receipts (menu rows, subtotal, total): the shape the demo's tiny model learns")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        counts = generate(
            args.out_dir, train=args.train, validation=args.validation, test=args.test, seed=args.seed,
            photo_like=args.photo_like, bad_records=args.bad_records, force=args.force, workers=args.workers,
            simple=args.simple,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    files = sorted((args.out_dir / "data").glob("*.parquet"))
    total = sum(f.stat().st_size for f in files)
    for f in files:
        print(f"{f}  {f.stat().st_size / 1e6:.2f} MB")
    print(
        f"wrote train={counts['train']} validation={counts['validation']} test={counts['test']} "
        f"(bad records: {counts['bad_records']}) in {elapsed:.1f}s, {total / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
