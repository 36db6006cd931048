# RetinaNet, ResNet-50 + FPN, 1x schedule: MMDetection's standard config, as a GPU user starts
# from it. Kiln sets the dataset (paths per dataloader and evaluator, classes, num_classes).
# The backbone starts from torchvision's ImageNet weights (downloaded by MMEngine on first use).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
