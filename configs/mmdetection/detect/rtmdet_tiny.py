# RTMDet-tiny, 300 epochs: MMDetection's real-time detector, as a GPU user starts from it.
# Kiln sets the dataset (paths per dataloader and evaluator, classes, num_classes).
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
