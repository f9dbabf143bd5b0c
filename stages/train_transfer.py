"""train_transfer: torchvision ResNet50-FPN Mask R-CNN, COCO weights, frozen then unfrozen."""

from stages.train import run

if __name__ == "__main__":
    run("transfer")
