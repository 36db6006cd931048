# Copied verbatim (below this header) from ../shared/realclient/mmdetection/make_dataset.py, the
# script that made the dataset the real MMDetection 3.3.0 trainer was observed with.
# It produced workflows/data/demo-coco-release.zip. To regenerate (needs Pillow and numpy):
#   python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
#   /tmp/pilvenv/bin/python workflows/data/make_coco_dataset.py /tmp/coco
#   (cd /tmp/coco && python3 -m zipfile -c ../demo-coco-release.zip annotations train val)
#   cp /tmp/demo-coco-release.zip workflows/data/demo-coco-release.zip
# The ZIP holds a COCO layout: annotations/{train,val}.json (COCO instances), train/ (16 images)
# and val/ (4 images), 128x128 PNGs, two categories red_rect (id 1) and blue_rect (id 2).
#!/usr/bin/env python3
"""Make a tiny synthetic COCO-format detection dataset (no downloads).

Layout produced (under OUT, default ./data/shapes):
    OUT/train/000000.png ...          images
    OUT/val/000000.png ...
    OUT/annotations/train.json        COCO instances json
    OUT/annotations/val.json

Two classes: 'red_rect' (filled red rectangle) and 'blue_rect' (filled blue
rectangle), 1-3 objects per image, on a noisy grey background.

Usage: python make_dataset.py [OUT] [--train 16] [--val 4] [--size 128] [--seed 0]
"""
import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = [(1, 'red_rect', (220, 30, 30)), (2, 'blue_rect', (30, 30, 220))]


def make_split(out, split, n, size, rng, ann_start_id=1):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    images, anns = [], []
    ann_id = ann_start_id
    for i in range(n):
        bg = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
        img = Image.fromarray(bg, 'RGB')
        draw = ImageDraw.Draw(img)
        placed = []
        for _ in range(int(rng.integers(1, 4))):
            for _try in range(20):
                w = int(rng.integers(size // 6, size // 2))
                h = int(rng.integers(size // 6, size // 2))
                x = int(rng.integers(0, size - w))
                y = int(rng.integers(0, size - h))
                # avoid heavy overlap so the task is learnable
                if all(x + w <= px or px + pw <= x or y + h <= py or py + ph <= y
                       for px, py, pw, ph in placed):
                    break
            else:
                continue
            placed.append((x, y, w, h))
            cid, _, color = CLASSES[int(rng.integers(0, len(CLASSES)))]
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
            anns.append(dict(id=ann_id, image_id=i + 1, category_id=cid,
                             bbox=[x, y, w, h], area=w * h, iscrowd=0,
                             segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
            ann_id += 1
        fname = f'{i:06d}.png'
        img.save(os.path.join(out, split, fname))
        images.append(dict(id=i + 1, file_name=fname, width=size, height=size))
    coco = dict(images=images, annotations=anns,
                categories=[dict(id=c, name=nm, supercategory='shape')
                            for c, nm, _ in CLASSES])
    os.makedirs(os.path.join(out, 'annotations'), exist_ok=True)
    with open(os.path.join(out, 'annotations', f'{split}.json'), 'w') as f:
        json.dump(coco, f)
    return len(images), len(anns)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('out', nargs='?', default='data/shapes')
    p.add_argument('--train', type=int, default=16)
    p.add_argument('--val', type=int, default=4)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    for split, n in (('train', a.train), ('val', a.val)):
        ni, na = make_split(a.out, split, n, a.size, rng)
        print(f'{split}: {ni} images, {na} boxes -> {a.out}/annotations/{split}.json')


if __name__ == '__main__':
    main()
