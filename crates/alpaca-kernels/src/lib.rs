//! alpaca-kernels
