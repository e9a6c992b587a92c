//! ResNet encoders over cardiac MRI short-axis images (torchvision layout) and SimCLR projection
//! heads, loadable from torchvision-style and released MMCL checkpoints.
