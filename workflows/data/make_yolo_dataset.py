# Copied verbatim (below this header) from ../shared/realclient/make_yolo_dataset.py, the script used
# to make the dataset the real Ultralytics 8.4.190 trainer was observed with.
# It produced workflows/data/demo-release.zip (= OUT_DIR/release.zip). To regenerate (needs Pillow):
#   python3 -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow
#   /tmp/pilvenv/bin/python workflows/data/make_yolo_dataset.py /tmp/ds
#   cp /tmp/ds/release.zip workflows/data/demo-release.zip
# The ZIP is a labeling-tool style export: data.yaml (train: ../train/images, val: ../valid/images),
# train/{images,labels} (16 images) and valid/{images,labels} (4 images), two classes red_box/blue_box.
"""Make a tiny synthetic YOLO detection dataset and a release ZIP laid out like a labeling-tool export.
usage: make_yolo_dataset.py OUT_DIR  -> OUT_DIR/data (extracted) and OUT_DIR/release.zip"""
import os, random, sys, zipfile
from PIL import Image, ImageDraw

out = sys.argv[1]
root = os.path.join(out, "data")
rng = random.Random(0)
names = ["red_box", "blue_box"]
for split, n in (("train", 16), ("valid", 4)):
    os.makedirs(f"{root}/{split}/images", exist_ok=True)
    os.makedirs(f"{root}/{split}/labels", exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (64, 64), (rng.randint(180, 255),) * 3)
        d = ImageDraw.Draw(img)
        lines = []
        for _ in range(rng.randint(1, 2)):
            c = rng.randint(0, 1)
            w, h = rng.randint(12, 30), rng.randint(12, 30)
            x, y = rng.randint(0, 64 - w), rng.randint(0, 64 - h)
            d.rectangle([x, y, x + w, y + h], fill=(220, 30, 30) if c == 0 else (30, 30, 220))
            lines.append(f"{c} {(x + w / 2) / 64:.6f} {(y + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
        img.save(f"{root}/{split}/images/img_{i:03d}.jpg")
        open(f"{root}/{split}/labels/img_{i:03d}.txt", "w").write("\n".join(lines) + "\n")
open(f"{root}/data.yaml", "w").write(
    "train: ../train/images\nval: ../valid/images\n\nnc: 2\nnames: ['red_box', 'blue_box']\n")
with zipfile.ZipFile(os.path.join(out, "release.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for dp, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(dp, f)
            z.write(p, os.path.relpath(p, root))
print(os.path.join(out, "release.zip"))
