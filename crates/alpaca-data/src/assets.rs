//! Where `scripts/fetch-assets.sh` installs the real models and data sets (outside the
//! repository): `$ALPACA_ASSETS`, else `~/.cache/alpaca/assets`. The integration tests and
//! benchmarks of every crate find them here.

use std::path::PathBuf;

/// The assets directory (it may not exist yet).
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALPACA_ASSETS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/alpaca/assets")
}

/// The assets directory, once each of `needed` (entries under it) is there; otherwise a
/// message naming what is missing and the script that installs it.
pub fn require_assets(needed: &[&str]) -> Result<PathBuf, String> {
    let dir = assets_dir();
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|entry| !dir.join(entry).exists())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!(
            "{} lacks {}: run scripts/fetch-assets.sh",
            dir.display(),
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_entries_are_named() {
        let error = require_assets(&["no-such-asset-anywhere"]).unwrap_err();
        assert!(error.contains("lacks no-such-asset-anywhere"), "{error}");
        assert!(error.contains("scripts/fetch-assets.sh"), "{error}");
        assert!(require_assets(&[]).is_ok());
    }
}
