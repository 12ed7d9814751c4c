"""Data sets on disk: IDX files and the MNIST layout torchvision uses."""
