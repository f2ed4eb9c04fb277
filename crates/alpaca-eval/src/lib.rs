//! alpaca-eval
