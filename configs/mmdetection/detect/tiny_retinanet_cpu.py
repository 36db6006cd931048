# Tiny RetinaNet (ResNet-18 + slim FPN/head) trained FROM SCRATCH on CPU: the demo detector.
# The config the real MMDetection 3.3.0 training was run with
# (../shared/realclient/mmdetection/tiny_retinanet_shapes.py), with the dataset left to Kiln.
#
# Inherits mmdet's bundled config through mmengine's package-scoped base syntax
# ("mmdet::<path under mmdet/.mim/configs>"), so nothing is copied out of site-packages.
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'

# Kiln sets the dataset per dataloader and evaluator (data_root, ann_file, data_prefix, classes)
# from the extracted release; these stand for the demo release's layout.
data_root = 'data/'
img_scale = (128, 128)
metainfo = dict(
    classes=('red_rect', 'blue_rect'),
    palette=[(220, 30, 30), (30, 30, 220)])

# ---------------------------------------------------------------- model
model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,      # nothing frozen: random init, train everything
        norm_eval=False,
        init_cfg=None),        # NO pretrained weights (no download)
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(
        num_classes=2, in_channels=64, feat_channels=64, stacked_convs=2),
    # A from-scratch focal-loss head starts with scores ~0.01 (prior_prob);
    # the default score_thr=0.05 would give ZERO detections after a couple
    # of epochs -> CocoMetric logs "The testing results of the whole dataset
    # is empty", returns {} and save_best is skipped.  Keep every box.
    test_cfg=dict(score_thr=0.0, max_per_img=100))

# ---------------------------------------------------------------- data
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,   # must be False when num_workers=0
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/val.json',
    metric='bbox')
test_evaluator = val_evaluator

# ---------------------------------------------------------------- schedule
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8),
]
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=35, norm_type=2))

# ---------------------------------------------------------------- runtime
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=2),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3,
                    save_best='coco/bbox_mAP', rule='greater'))
log_processor = dict(type='LogProcessor', window_size=4, by_epoch=True)
randomness = dict(seed=0)
load_from = None
resume = False
