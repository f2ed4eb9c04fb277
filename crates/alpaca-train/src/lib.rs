//! alpaca-train
