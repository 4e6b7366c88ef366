//! The vision side of VoxTell.
//!
//! This crate will own the 3-D operations the network is built from (convolution, transposed
//! convolution, instance normalisation, leaky ReLU, average pooling), their fast CPU kernels and
//! their scalar reference implementations, autograd for training, and the residual encoder
//! (ResEncL) and decoder convolution blocks. It knows nothing about text.
