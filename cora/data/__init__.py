"""Datasets for open-vocabulary detection: COCO / LVIS OVD splits and datasets, training and evaluation
transforms, and a procedurally drawn shapes dataset (tests, demo).

    split = coco_ovd_split("instances_val2017.json")          # cora.data.splits: 48 base / 17 novel
    train = CocoDetection("instances_train2017.json", "train2017", vocabulary="base",
                          transforms=train_transforms())       # cora.data.coco, cora.data.transforms
    image, target = train[0]                                   # Tensor[3, H, W] in [0, 1], dict of boxes/labels
    write_synthetic("shapes", num_images=20, seed=0)           # cora.data.synthetic

Nothing here imports from cora.modeling, cora.engine or the command line (the import direction is
cli / engine -> modeling -> ops, data).
"""
