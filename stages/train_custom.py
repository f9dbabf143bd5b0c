"""train_custom: ResNet-18 + CBAM + FPN Mask R-CNN from scratch.

Scale out: torchrun --standalone --nproc_per_node=N -m stages.train_custom <same arguments>
"""

from stages.train import run

if __name__ == "__main__":
    run("custom")
