//! alpaca-data
