//! alpaca-track
