# Faster R-CNN, ResNet-50 + FPN, 1x schedule: MMDetection's standard two-stage config, as a GPU
# user starts from it. Kiln sets the dataset (paths per dataloader and evaluator, classes, and
# every num_classes of the model).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
