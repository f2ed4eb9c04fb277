//! alpaca-models
