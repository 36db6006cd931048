# The base config a `detect` training starts from when it names none: the tiny CPU detector.
# Copy a file of this folder (or write your own with `_base_`) to start from another.
_base_ = './tiny_retinanet_cpu.py'
